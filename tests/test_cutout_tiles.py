"""Tiled matting gives what one whole-image solve gives: no seams at tile borders, no tile left
at its prior, subjects cut by the frame solved up to the frame; and the seam detector that the
cutout benchmark reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lib_layerdiffuse.cutout.refine as refine
from lib_layerdiffuse.cutout import cut_out
from lib_layerdiffuse.cutout.metrics import straight_seams
from lib_layerdiffuse.cutout.refine import solve_alpha, trimap_from_alpha
from lib_layerdiffuse.testing.anchors import oracle_trimap
from lib_layerdiffuse.testing.composites import backdrop_case, load_rgba, synthetic_case

RGBA = Path(__file__).resolve().parents[1] / "tests" / "data" / "rgba"


def _solve(monkeypatch, image, trimap, tile: int, margin: int) -> np.ndarray:
    monkeypatch.setattr(refine, "MATTING_TILE", tile)
    monkeypatch.setattr(refine, "MATTING_MARGIN", margin)
    return solve_alpha(image, trimap, trimap)


@pytest.mark.parametrize("foreground", ["strands", "disc", "glass"])
def test_tiled_matting_equals_one_whole_image_solve(monkeypatch, foreground):
    """[before: the glass panel's tiles without background kept 0.5 (off by 0.5), the strands'
    tile borders were off by 0.042]"""
    c = synthetic_case(foreground, "gradient", 256)
    trimap = oracle_trimap(c.alpha, 3).astype(np.float32)
    whole = _solve(monkeypatch, c.image, trimap, 10_000, 32)
    tiled = _solve(monkeypatch, c.image, trimap, 64, 16)
    assert np.abs(tiled - whole).max() < 0.025
    assert straight_seams(tiled, whole, jump=0.02, shortest=8) == (0, 0)


def test_an_unknown_region_enclosed_by_foreground_is_opaque_in_any_tile(monkeypatch):
    """A tile that sees no background used to keep the prior (0.5) for an unknown patch inside
    the subject; the whole-image solution there is 1 (only foreground touches it)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8)
    trimap = np.zeros((192, 192), np.float32)
    trimap[:, 96:] = 1.0
    trimap[120:180, 130:180] = 0.5  # inside the foreground, far from the background
    trimap[:, 92:100] = 0.5  # the edge band, touching both
    alpha = _solve(monkeypatch, image, trimap, 48, 8)
    assert np.all(alpha[120:180, 130:180] == 1.0)
    assert np.all(alpha[:, 92:100] >= 0) and np.all(alpha[:, 92:100] <= 1)


def test_a_long_band_anchored_far_from_a_tile_is_solved_as_one(monkeypatch):
    """A band of subject colour along the frame (a jacket cut by the bottom edge) whose only sure
    foreground is far from some of its tiles: each tile must still reach that anchor. [before:
    contexts grew to 4 margins, the far tiles saw only background and fell to 0.2-0.35, with a
    straight step where the tiles met (man_crop framed at 2048 px: SAD 11.4, worse than the key)]"""
    h, w = 64, 192
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = (40, 140, 70)  # the backdrop
    image[40:, :] = (70, 80, 120)  # the band, along the bottom edge
    trimap = np.zeros((h, w), np.float32)
    trimap[36:, :] = 0.5
    trimap[44:, :24] = 1.0  # sure foreground at the left end only
    whole = _solve(monkeypatch, image, trimap, 10_000, 8)
    tiled = _solve(monkeypatch, image, trimap, 48, 8)  # the last tile starts 120 px (15 margins) away
    assert whole[48:, 150:].min() > 0.95
    assert np.abs(tiled - whole).max() < 0.025
    assert straight_seams(tiled, whole, jump=0.02, shortest=8) == (0, 0)


def test_an_unknown_region_touching_no_sure_pixel_keeps_its_prior():
    image = np.full((40, 40, 3), 120, np.uint8)
    trimap = np.full((40, 40), 0.5, np.float32)
    prior = np.tile(np.linspace(0.1, 0.3, 40, dtype=np.float32), (40, 1))
    assert np.array_equal(solve_alpha(image, trimap, prior), prior)


def test_the_frame_is_not_background_for_a_subject_cut_by_it():
    alpha = np.zeros((60, 60), np.float32)
    alpha[30:, :] = 1.0  # cut by the bottom edge and both sides
    trimap = trimap_from_alpha(alpha, 0.95, 0.05, 5)
    assert np.all(trimap[-1, :] == 1.0) and np.all(trimap[40:, 0] == 1.0)  # [before: 0.5 along the frame]
    assert np.all(trimap[0, :] == 0.0) and np.all(trimap[28:32, 30] == 0.5)


def test_the_seam_detector_finds_straight_steps_the_truth_does_not_have():
    truth = np.zeros((100, 100), np.float32)
    truth[20:80, 20:80] = 1.0
    assert straight_seams(truth, truth) == (0, 0)
    rectangle = truth.copy()
    rectangle[50:80, 20:60] = 0.5  # a block left at a prior: its top edge (40 px) and right side (30)
    lines, longest = straight_seams(rectangle, truth)
    assert lines == 2 and longest == 40
    noisy = np.clip(truth + np.random.default_rng(1).normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    assert straight_seams(noisy, truth) == (0, 0)  # scattered jumps are not a seam


@pytest.mark.slow
def test_a_cat_cut_by_the_frame_has_no_tile_shaped_hole_at_1024_px():
    """The issue's case: fur running off the bottom of a 1024 px JPEG over a vignette. Before,
    a 448 px matting tile at the bottom edge saw no background and kept alpha 0.5 inside the cat
    (a hard-edged rectangle; the new background showed through the body)."""
    fg, alpha = load_rgba(next(RGBA.glob("*cat.png")), 1024)
    c = backdrop_case("cat", fg, alpha, "jpeg", np.random.default_rng([0, 0, 4]))
    ours = cut_out(c.image, model="weight-free").alpha
    assert straight_seams(ours, c.alpha) == (0, 0)
    opaque = c.alpha > 0.99
    assert np.count_nonzero(np.abs(ours[opaque] - 0.5) < 0.01) < 50


def test_the_benchmark_frames_subjects_by_the_frame_and_reports_seams():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "cutout_quality.py"), "--rgba", str(RGBA),
                          "--sizes", "96", "--backdrops", "jpeg", "--cut", "--refines", "decontaminate"],
                         capture_output=True, text=True, check=True).stdout
    assert "| cases with seams |" in out and "| weight-free, decontaminate |" in out
    assert "weight-free, none" not in out
    assert out.count(" cut/jpeg s0 96 |") == len(list(RGBA.glob("*.png")))
    assert "| s0 96 jpeg cut (" in out  # the by-backdrop table groups the framed cases


def test_framed_subjects_run_out_of_the_frame():
    for index, path in enumerate(sorted(RGBA.glob("*.png"))):
        _, alpha = load_rgba(path, 64, cut=1 + index % 2)
        assert (alpha[-1] > 0.5).any() or (alpha[:, 0] > 0.5).any() or (alpha[:, -1] > 0.5).any(), path.name


@pytest.mark.parametrize("name, cut", [("result_sdxl", 1), ("cat", 1)])
def test_a_subject_covering_most_of_the_border_is_cut_out_not_refused(name, cut):
    """The plane under the background is chosen by its 30% quantile of residuals: a subject cut
    by the frame at the bottom and a side may cover up to 70% of the border. [before: least
    median of squares, refused when half of the border was subject]"""
    from lib_layerdiffuse.cutout.metrics import sad
    from lib_layerdiffuse.testing.anchors import colour_key

    fg, alpha = load_rgba(next(RGBA.glob(f"*{name}.png")), 256, cut=cut)
    c = backdrop_case(name, fg, alpha, "vignette", np.random.default_rng([0, 5]))
    border = np.concatenate([c.alpha[0], c.alpha[-1], c.alpha[:, 0], c.alpha[:, -1]])
    assert (border > 0.5).mean() > 0.45  # the subject covers about half of the border, or more
    ours = sad(cut_out(c.image, model="weight-free").alpha, c.alpha)
    assert ours < sad(colour_key(c.image), c.alpha) and ours < 2.0, ours
