"""Make docs/app-cutout.png: the web app (offline, no model) after a weight-free cutout of a real
LayerDiffuse RGBA output composited over a gradient, in headless Chromium.

    python docs/screenshot.py ../shared/data/rgba/rootonchair__result_sdxl.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lib_layerdiffuse.app import Backend
from lib_layerdiffuse.testing.browser import find_browser, launch_chromium, running_app


def composite(path: Path, side: int) -> np.ndarray:
    """The RGBA file over a vertical beige-to-blue gradient, as a photo-like RGB input."""
    with Image.open(path) as img:
        fg = img.convert("RGBA").resize((side, side), Image.LANCZOS)
    t = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    top, bottom = np.array([236, 222, 196], np.float32), np.array([150, 178, 214], np.float32)
    bg = np.broadcast_to(top * (1 - t) + bottom * t, (side, side, 3))
    arr = np.asarray(fg, np.float32)
    a = arr[..., 3:] / 255.0
    return np.clip(arr[..., :3] * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rgba", type=Path, help="a straight-alpha RGBA PNG")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("app-cutout.png"))
    parser.add_argument("--side", type=int, default=640)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "product-shot.png"
        Image.fromarray(composite(args.rgba, args.side)).save(source)
        backend = Backend(offline=True, models_dir=str(tmp / "weights"), cutout_models_dir=str(tmp / "u2net"),
                          out_dir=tmp / "out")
        with running_app(backend) as url, sync_playwright() as pw:
            browser = launch_chromium(pw, find_browser())
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Cutout").click()
            page.set_input_files("#ld-cut-image input[type=file]", str(source))
            page.wait_for_selector("#ld-cut-image img")
            page.get_by_label("alpha matting").check()
            page.click("#ld-cut-run")
            page.wait_for_selector("#ld-cut-gallery img", timeout=120_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
