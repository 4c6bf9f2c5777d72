"""The weight-free cutout: a subject on a flat or smooth background, no model, no download.

1. Background (`background.py`): a colour surface fitted robustly to the image border, then
   refitted on every background pixel as the subject mask improves, until the mask settles
   (a refit changes at most `SETTLED` of it; at most `ROUNDS` refits). Each refit takes back only
   part of a subject the first surface swallowed: a dark suit along the frame took four refits
   in the darkened corners of a cos^4 vignette (SAD 11.2 after three, 0.95 settled) and nine on
   a noisy JPEG whose backdrop is close to its colour. On noisy images the mask never stops
   changing entirely: a few pixels at the noise threshold flip from refit to refit.
2. Subject mask: distance to the surface, measured on a lightly smoothed copy (so noise and JPEG
   artefacts do not reach the thresholds), split by hysteresis: pixels above a low threshold
   (1.5 x the background's noise) belong to the subject when their region also holds pixels above
   a high one, or touches the frame where the border fit rejected it. Small enclosed holes are
   filled; larger ones stay background.
3. Trimap: sure foreground is the mask's interior (further than the edge band inside) where the
   pixel cannot be a light mix with the background (its least possible alpha, from the known
   background, is above `SEE_THROUGH`), plus any pixel whose least alpha is near 1; sure
   background is more than `GAP` pixels outside the mask. Everything else, see-through parts
   such as glass included, is solved.
4. Closed-form matting solves alpha in the unknown region (`refine.solve_alpha`), starting from
   the least alpha. In large see-through regions (glass: median least alpha under `FAINT`) a
   soft term pulls alpha towards the least alpha, the unmix bound from the known background,
   which for light see-through material over a darker backdrop is close to the true alpha;
   colour alone cannot tell glass from the backdrop it shows, and without the pull matting
   filled a 1024 px bottle's body to 0.5-0.6 (true 0.14; SAD 92.8 against the key's 79.1,
   19.0 with the pull). The least alpha is a lower bound (the bottle's body: 0.10 against a
   true 0.16), so the pull is weak: on 14 glass composites at 384 px the total SAD was 70.8
   without it, 38.1 at `PULL` 0.001, 38.5 at 0.01, 54.7 at 0.0001. A second solve takes its sure regions from the first alpha, which covers
   edges softer than the band. Large interior regions the first solve left translucent although
   their colours cannot be faint mixes (a beige suit on tan) are sure foreground in the second.
5. No alpha in the subject stays under a large unmix bound (thin dark outlines on a dark backdrop).
Widths (the edge band, the smoothing) are for images of `REFERENCE` pixels a side and grow with
larger ones up to `WIDEST`: at 1024 px a 10 px band and a 1 px blur left a glass bottle's body to
a solve with anchors too close to its edge (SAD 162 against the key's 100; scaled, 57). Growing
them further made whole matting tiles unknown: at 4 MP the peak memory rose from 54 to 90 bytes
per pixel.
The result carries the background surface, so colour estimation can unmix it exactly.
A background that is not smooth (texture, a scene) gives a CutoutError suggesting a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .background import NOISE_FLOOR, BackgroundSurface, fit_border, fit_surface
from .refine import solve_alpha, trimap_from_alpha, unit_float

MAX_SPREAD = 0.08  # border spread above this: the background is not smooth
MIN_BACKGROUND = 0.3  # share of the border that must follow the background surface
LOW = 1.5  # low hysteresis threshold, in multiples of the background's noise
FIRST_LOW = 0.06  # the first mask only takes clear differences (the first surface is rough)
STRONG = 0.08  # a region must reach this distance somewhere to be subject
SEE_THROUGH = 0.6  # least alpha under which the interior is solved, not assumed opaque
CERTAIN = 0.97  # least alpha above which a pixel is opaque wherever it is
BOUND = 0.5  # least alpha (of the unsmoothed image) above which alpha is raised to it in the subject
LARGE = 0.02  # interior regions above this fraction of the image are decided whole, not matted
FAINT = 0.18  # a large region whose median least alpha is under this is see-through (glass)
CLEAR = 0.05  # least alpha under which a pixel looks just like the background
HAIR = 3  # pixels around such a pixel that stay unknown inside opaque regions
DECIDED = 0.95  # a large region the first matting solved above this mean alpha is left to it
# (at 0.9 a jacket cut by the frame, solved to a mean of 0.9 at 1024 px, was left to a second
# solve that lowered it to 0.78: SAD 20.3 against the key's 4.9; at 0.95 it is opaque, 2.4)
PULL = 0.001  # weight of the pull towards the least alpha in see-through regions (see the note above)
GAP = 2  # pixels between the subject mask and sure background
SMOOTH_SIGMA = 1.0
SMALL = 64  # images with a side under this are not smoothed and get no gap
REFERENCE = 384  # widths are in pixels of an image this size; larger images scale them up ...
WIDEST = 1024  # ... up to this size: beyond it, wider bands cost memory (fully unknown matting tiles)
ROUNDS = 16
SETTLED = 0.0005  # a refit that changes at most this fraction of the mask ends the refits
_USE_MODEL = "choose a model such as isnet-general-use for this image"


class CutoutError(ValueError):
    """The image cannot be cut out this way; the message says why and what to do."""


@dataclass
class BorderMatte:
    alpha: np.ndarray  # HxW float32
    background: BackgroundSurface  # the estimated background colour surface
    noise: float


STAGES = ("Finding the background", "Matting the edge", "Matting the edge, second pass")


def _smoothed(image: np.ndarray, sigma: float) -> np.ndarray:
    """HxWx3 uint8: `image` blurred by a Gaussian of `sigma` pixels, one channel at a time."""
    from scipy.ndimage import gaussian_filter

    out = np.empty(image.shape[:2] + (3,), np.uint8)
    for c in range(3):
        channel = gaussian_filter(unit_float(image[..., c], np.float32), sigma)
        np.clip(channel * 255.0 + 0.5, 0, 255, out=channel)
        out[..., c] = channel
    return out


def _hysteresis(distance: np.ndarray, low: float, high: float, seeds: np.ndarray) -> np.ndarray:
    """Regions above `low` that reach `high` somewhere or hold a seed pixel."""
    from scipy import ndimage

    labels, count = ndimage.label(distance > low)
    strong = np.zeros(count + 1, bool)
    strong[np.unique(labels[distance > high])] = True
    strong[np.unique(labels[seeds])] = True
    strong[0] = False
    return strong[labels]


def _fill_small_holes(subject: np.ndarray, smallest: int) -> np.ndarray:
    """`subject` with enclosed background regions under `smallest` pixels filled."""
    from scipy import ndimage

    labels, count = ndimage.label(~subject)
    if not count:
        return subject
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= smallest
    for side in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        keep[side] = True
    keep[0] = False
    return ~keep[labels]


def _subject(distance: np.ndarray, low: float, high: float, seeds: np.ndarray) -> np.ndarray:
    return _fill_small_holes(_hysteresis(distance, low, high, seeds), max(16, distance.size // 1000))


def _large_regions(mixable: np.ndarray, least: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(opaque regions, opaque pixels, see-through): the large regions of `mixable` (interior
    pixels that could be light mixes) that may be opaque, whole, the pixels in them that may be
    set opaque, and the large regions that are see-through.

    Matting cannot decide a large region whose colour is close to the background: with its
    anchors far away it settles near one half. Glass and other see-through material shows the
    background almost unchanged (median least alpha near 0.1); a large region of subject colour
    that merely resembles the background (a beige suit on tan) has a clearly higher median.
    Within such a region, pixels that could be faint mixes, and pixels near one that looks just
    like the background, stay unknown. Masks are kept instead of the least alpha itself,
    so the first solve runs without it in memory."""
    from scipy import ndimage

    labels, count = ndimage.label(mixable)
    if not count:
        return mixable, mixable, mixable
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    # median least alpha above FAINT: more than half of the region's pixels are above it
    # (counted, not sorted: a median sorts every interior pixel and costs 16 bytes each)
    above = np.bincount(labels[least > FAINT], minlength=count + 1)
    large = sizes >= LARGE * mixable.size
    large[0] = False
    see_through = (large & (2 * above <= sizes))[labels]
    regions = (large & (2 * above > sizes))[labels]
    del labels
    if not regions.any():
        return regions, regions, see_through
    near_background = ndimage.binary_dilation(least < CLEAR, iterations=HAIR)
    return regions, regions & (least > FAINT) & ~near_background, see_through


def _left_translucent(regions: np.ndarray, pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The `pixels` of those `regions` that the first matting left translucent: whole regions
    whose mean alpha is under DECIDED, and within the others every part under DECIDED that is
    itself large (LARGE). Small translucent parts of mostly opaque regions (fur with background
    between the hairs at its fringe) are left to matting; a large one is subject colour that
    matting cannot tell from a mix (a jacket cut by the frame, its colour a possible 40% mix
    with the backdrop: the first solve put its corner at 0.83, a second at 0.25)."""
    from scipy import ndimage

    labels, count = ndimage.label(regions)
    if not count:
        return pixels
    translucent = np.zeros(count + 1, bool)
    translucent[1:] = np.asarray(ndimage.mean(alpha, labels, np.arange(1, count + 1))) < DECIDED
    decided = translucent[labels]
    del labels
    parts, count = ndimage.label(regions & (alpha < DECIDED))
    large = np.bincount(parts.ravel(), minlength=count + 1) >= LARGE * regions.size
    large[0] = False
    return (decided | large[parts]) & pixels


def border_matte(image: np.ndarray, band: int = 10, progress=None) -> BorderMatte:
    """Alpha of the subject of `image` (HxWx3 uint8, or floats in [0,1]) against its smooth
    background; `band` is the edge band in pixels at REFERENCE size. `progress` (a
    `progress.Stages` holding STAGES) hears of each stage and tile."""
    from scipy import ndimage

    tick = progress.start(STAGES[0]) if progress is not None else None
    h, w = image.shape[:2]
    scale = min(max(1.0, min(h, w) / REFERENCE), WIDEST / REFERENCE)
    band = round(band * scale)
    fit = fit_border(image)
    if fit.fraction < MIN_BACKGROUND:
        raise CutoutError(f"the weight-free cutout needs a flat or smooth background, but only {fit.fraction:.0%} of "
                          f"the image border follows one smooth colour surface; {_USE_MODEL}")
    if fit.spread > MAX_SPREAD:
        raise CutoutError(f"the weight-free cutout needs a flat or smooth background, but the border varies "
                          f"by {fit.spread:.3f} around its best smooth fit (at most {MAX_SPREAD} works); {_USE_MODEL}")
    small = min(h, w) < SMALL
    smooth = image if small else _smoothed(image, SMOOTH_SIGMA * scale)
    surface, noise = fit.surface, fit.noise
    low = max(LOW * noise, NOISE_FLOOR)
    subject = _subject(surface.distance(smooth), max(low, FIRST_LOW), max(3 * low, 2 * STRONG), fit.outliers)
    for _ in range(ROUNDS):
        background = ~ndimage.binary_dilation(subject, iterations=1 if small else 3)
        if not background.any():
            break
        surface, noise = fit_surface(smooth, background)
        low = max(LOW * noise, NOISE_FLOOR)
        refit = _subject(surface.distance(smooth), low, max(3 * low, STRONG), fit.outliers)
        changed = np.count_nonzero(refit != subject)
        subject = refit
        if changed <= SETTLED * subject.size:
            break
    if not subject.any():
        raise CutoutError("no subject found: the whole image matches its border background")
    least = surface.least_alpha(smooth)
    inside = ndimage.distance_transform_cdt(subject, metric="taxicab")
    interior = inside > max(band, 1)
    sure = (interior & (least > SEE_THROUGH)) | (subject & (least > CERTAIN))
    mixable = interior & ~sure  # interior pixels that could be light mixes
    del interior
    if not sure.any():
        sure = inside >= inside.max()  # thin subjects: anchor on their core
    del inside
    regions, candidates, see_through = _large_regions(mixable, least)
    del mixable
    trimap = np.full((h, w), 0.5, np.float32)
    trimap[sure] = 1.0
    del sure
    outside = ndimage.distance_transform_cdt(~subject, metric="taxicab")
    trimap[outside > (0 if small else GAP)] = 0.0
    del outside
    prior = np.where(subject & ~see_through, np.maximum(least, 0.5), least).astype(np.float32)
    del least
    if tick is not None:
        tick(1, 1)
    alpha = solve_alpha(image, trimap, prior, progress.start(STAGES[1]) if progress is not None else None,
                        see_through, PULL)
    del trimap, prior
    # second pass: sure regions from the first alpha, so edges softer than the band are solved too
    trimap = trimap_from_alpha(alpha, 0.95, 0.02, max(band, 1))
    trimap[_left_translucent(regions, candidates, alpha)] = 1.0
    del regions, candidates
    alpha = solve_alpha(image, trimap, alpha, progress.start(STAGES[2]) if progress is not None else None,
                        see_through, PULL)
    del trimap
    # the unmix bound holds for every pixel: no alpha can be lower (matting goes under it on thin
    # dark outlines); only large bounds are used, which noise cannot produce
    floor = surface.least_alpha(image)
    raise_to = subject & (floor > BOUND)
    alpha[raise_to] = np.maximum(alpha[raise_to], floor[raise_to])
    return BorderMatte(alpha=alpha, background=surface, noise=noise)
