"""Run this checkout inside a real Forge and print what happened.

    FORGE_DIR=/path/to/stable-diffusion-webui-forge python e2e/forge/run.py [--screenshot docs/forge-txt2img.png]

FORGE_DIR may be lllyasviel's Forge (`main`, tag `previous`) or a Forge Neo tree (told apart by
modules_forge/forge_version.py; Python 3.13 venv, `--cpu`, no stealth-infotext cases, hires
fix with the upscaler "None"). Creates Forge's venv (CPU torch) when it is missing, clones the
repositories Forge wants, writes a random full-size SD1.5 (or, with --family sdxl, SDXL)
checkpoint and random layer files in the official layouts (used through --layerdiffuse-allow-unpinned: they are not the
official bytes), copies this checkout into extensions/ and runs its install.py, starts Forge
on 127.0.0.1 with --api, runs `cases.matrix()` (or `cases.sdxl_matrix()`) and prints a
Markdown table. After every case (or chain of cases that must follow each other) it makes a
plain call and compares its pixels with the same plain call made before any LayerDiffuse call:
a host left patched, with stale weights or raising on later calls fails the case whatever the
case itself returned. Exits 1 when any expectation fails. Run it with this project's
Python (it needs torch, safetensors, requests and Pillow to write the weights and read the
results); Forge runs in its own venv.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import controlnet_files  # noqa: E402
import conventions  # noqa: E402
import flux_files  # noqa: E402
import lora_files  # noqa: E402
from cases import BASE, LORA_A, LORA_B, OTHER_SD15, SDXL_LORA, Case, Result, flux_matrix, matrix, run_case, sdxl_matrix  # noqa: E402
from host import CHECKPOINT_NAMES, Forge, Server, log  # noqa: E402

LOCAL_SEGMENTER = "BiRefNet-rig.onnx"
CONTROLNET = "rig-controlnet-sd15.safetensors"  # controlnet_files.write_controlnet

LAYER_FILES = {
    "sd15": ("layer_sd15_transparent_attn.safetensors", "layer_sd15_joint.safetensors",
             "layer_sd15_fg2bg.safetensors", "layer_sd15_bg2fg.safetensors",
             "layer_sd15_vae_transparent_decoder.safetensors", "layer_sd15_vae_transparent_encoder.safetensors"),
    # the attention-injection LoRA only: Forge keeps a backup of every weight a patch touches,
    # and a full-size conv-injection diff would not fit next to an SDXL model in 24 GB
    "sdxl": ("layer_xl_transparent_attn.safetensors", "vae_transparent_decoder.safetensors",
             "vae_transparent_encoder.safetensors"),
}
# --layer-methods: SDXL fg->blend and conv injection (the conv diff is 3.6 GB)
SDXL_LAYER_FILES = ("layer_xl_fg2ble.safetensors", "layer_xl_fgble2bg.safetensors", "layer_xl_bg2ble.safetensors",
                    "layer_xl_bgble2fg.safetensors", "layer_xl_transparent_conv.safetensors")


def write_weights(cache: Path, family: str, layer_methods: bool = False) -> tuple[Path, list[Path]]:
    """The random checkpoint and layer files of `family` at full size (kept in `cache`)."""
    from lib_layerdiffuse.testing.checkpoints import write_random_checkpoint
    from lib_layerdiffuse.testing.layer_files import (
        decoder_layout,
        keep_control_signal,
        offset_encoder_layout,
        random_state_dict,
        unet_file_layout,
        write_weight_file,
    )
    from lib_layerdiffuse.testing.unet_specs import FULL
    from lib_layerdiffuse.weights.catalog import CATALOG

    log(f"random {family} checkpoint (written once)")
    checkpoint = write_random_checkpoint(cache / CHECKPOINT_NAMES[family], family=family)
    files = []
    names = LAYER_FILES[family] + (SDXL_LAYER_FILES if layer_methods and family == "sdxl" else ())
    for i, name in enumerate(names):
        path = cache / name
        if not path.is_file():
            entry = CATALOG[name]
            if entry.role == "decoder":
                layout, std = decoder_layout(), 0.1
            elif entry.role == "encoder":
                layout, std = offset_encoder_layout(), 0.1
            else:
                layout, std = unet_file_layout(name, FULL[family]), 0.02
            log(f"writing a random {name}")
            written = write_weight_file(path, keep_control_signal(random_state_dict(layout, 100 + i, std)),
                                        entry.family, entry.role)
            assert written.layout_sha256 == entry.layout_sha256, name
        files.append(path)
    return checkpoint, files


def prepare(forge: Forge, cache: Path, family: str, layer_methods: bool = False) -> None:
    from lib_layerdiffuse.testing.onnx_models import write_segmenter

    forge.prepare_venv()
    forge.prepare_repositories()
    if family == "flux":
        log("random FLUX.1-dev files (written once, about 12 GB)")
        checkpoint, modules, files = flux_files.write_all(cache, forge.root)
        forge.place(modules["vae"], "VAE")
        forge.place(modules["t5"], "text_encoder")
        forge.place(modules["clip_l"], "text_encoder")
    else:
        checkpoint, files = write_weights(cache, family, layer_methods)
    if family == "sd15":  # the user LoRAs and the second checkpoint of the combination cases
        for seed, name in enumerate((LORA_A, LORA_B)):
            forge.place(lora_files.write_kohya_lora(cache / f"{name}.safetensors", seed), "Lora")
        from lib_layerdiffuse.testing.checkpoints import write_random_checkpoint

        forge.place(write_random_checkpoint(cache / OTHER_SD15, seed=1, family="sd15"), "Stable-diffusion")
        forge.place(controlnet_files.write_controlnet(cache / CONTROLNET), "ControlNet")
    if family == "sdxl":
        from lib_layerdiffuse.testing.unet_specs import FULL

        # attention only: Forge backs up every weight a LoRA merges, and in fp32 on the CPU a LoRA
        # on all 2 G transformer weights of SDXL (8 GB of backups) does not fit beside SDXL in 24 GB
        lora = lora_files.write_kohya_lora(cache / f"{SDXL_LORA}.safetensors", 2, FULL["sdxl"], text=False,
                                           modules=lora_files.ATTENTION_TARGETS)
        forge.place(lora, "Lora")
    forge.place(checkpoint, "Stable-diffusion")
    for path in files:
        forge.place(path, "layer_model")
    # a tiny segmenter in BiRefNet's conventions, for the cutout dropdown and the local-model case
    forge.place(write_segmenter(cache / LOCAL_SEGMENTER, size=1024, logits=True), "u2net")
    forge.install_extension()


def local_model_listed(url: str) -> list[str]:
    """Failures, if the cutout dropdowns of the running Forge do not offer the rig's ONNX file."""
    config = requests.get(f"{url}/config", timeout=120)
    config.raise_for_status()
    wanted = f"local:{LOCAL_SEGMENTER}"
    dropdowns = [c for c in config.json().get("components", [])
                 if str(c.get("props", {}).get("elem_id", "")).endswith("cutout_model")]
    listed = [c for c in dropdowns if wanted in json.dumps(c["props"].get("choices", []))]
    if not dropdowns:
        return ["no cutout model dropdown in Forge's /config"]
    return [] if len(listed) == len(dropdowns) else [f"{wanted} is missing from {len(dropdowns) - len(listed)} of "
                                                     f"{len(dropdowns)} cutout model dropdowns"]


def select_at_start(root: Path, checkpoint: str) -> None:
    """Forge's config.json names `checkpoint` as the selected one when Forge starts."""
    config = root / "config.json"
    data = json.loads(config.read_text()) if config.exists() else {}
    data["sd_model_checkpoint"] = checkpoint
    config.write_text(json.dumps(data, indent=4))


def _capture(url: str, target: Path, show: Callable) -> None:
    """A screenshot of one element of the running Forge's page, from headless Chromium:
    `show(page)` opens it and returns its locator."""
    from playwright.sync_api import sync_playwright

    from lib_layerdiffuse.testing.browser import find_browser, launch_chromium

    with sync_playwright() as pw:
        browser = launch_chromium(pw, find_browser())
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url, timeout=300_000)
        page.locator("#tab_txt2img").wait_for(timeout=300_000)
        element = show(page)
        element.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        target.parent.mkdir(parents=True, exist_ok=True)
        element.screenshot(path=str(target))
        browser.close()


def _open_panel(page):
    """The LayerDiffuse accordion of the txt2img tab, opened."""
    panel = page.locator("#script_txt2img_layerdiffuse_accordion")
    panel.wait_for(timeout=300_000)
    panel.get_by_text("LayerDiffuse", exact=True).first.click()
    panel.get_by_text("Method", exact=True).first.wait_for(timeout=60_000)
    return panel


def _open_extras_cutout(page):
    """The Extras tab with the LayerDiffuse cutout accordion opened."""
    page.get_by_role("tab", name="Extras").first.click()
    panel = page.locator("#extras_layerdiffuse_cutout")
    panel.wait_for(timeout=60_000)
    panel.get_by_text("LayerDiffuse cutout").first.click()
    panel.get_by_text("Cutout model").first.wait_for(timeout=60_000)
    return panel


def _open_settings(page):
    """Settings -> LayerDiffuse."""
    page.get_by_role("tab", name="Settings").first.click()
    page.locator("#settings").get_by_role("tab", name="LayerDiffuse").first.click()
    section = page.locator("#settings_layerdiffuse")
    section.wait_for(timeout=60_000)
    return section


# the plain call made before any LayerDiffuse call and after every case: small, so that checking
# after each case costs little
RESTORE_PAYLOAD = {**BASE, "width": 256, "height": 256, "save_images": False}


class Restoration:
    """The plain call's pixels before any LayerDiffuse call, and the comparison after a case."""

    def __init__(self, url: str):
        self.url = url
        status, self.reference = self._plain()
        if self.reference is None:
            raise RuntimeError(f"the plain reference call failed (HTTP {status})")

    def _plain(self):
        import numpy as np

        from cases import _decode

        reply = requests.post(f"{self.url}/sdapi/v1/txt2img", json=RESTORE_PAYLOAD, timeout=3600)
        if reply.status_code != 200:
            return reply.status_code, None
        image = _decode(reply.json()["images"][0]).convert("RGB")
        return 200, np.asarray(image).astype(int)

    def check(self) -> str:
        """'same', or what differs."""
        status, rgb = self._plain()
        if rgb is None:
            return f"plain call HTTP {status}"
        diff = abs(rgb - self.reference)
        return "same" if not diff.any() else f"CHANGED ({int((diff > 0).sum())} values, max {int(diff.max())})"


def table(results: list[Result], baseline: float) -> str:
    rows = ["| Case | HTTP | s | × plain | Response (main images) | Saved files | Plain call after | Expectations |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        per_image = r.seconds / max(1, r.case.payload.get("batch_size", 1))
        ratio = f"{per_image / baseline:.2f}" if baseline else "-"
        response = "; ".join(s.short() for s in r.main) or "none"
        saved = "; ".join(f"{Path(n).suffix} {s.short()}" for n, s in r.saved) or "none"
        verdict = "ok" if not r.failures else "FAILED: " + " / ".join(r.failures)
        if r.cutout_refusal and not r.failures:
            verdict = f"ok (kept, with the reason: {r.cutout_refusal[:90]})"
        if r.case.refused and not r.failures:
            verdict = "ok (refused by name)"
        rows.append(f"| {r.case.name} | {r.http} | {r.seconds:.0f} | {ratio} | {response} | {saved} | {r.restored} "
                    f"| {verdict} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forge-dir", default=os.environ.get("FORGE_DIR"), help="Forge source tree (FORGE_DIR)")
    parser.add_argument("--cache", default=os.environ.get("FORGE_RIG_CACHE", str(Path.home() / ".cache" / "forge-rig")),
                        help="where the random weights are written once (about 4.5 GB)")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--only", nargs="*", help="run only cases whose name contains one of these")
    parser.add_argument("--screenshot", help="save a screenshot of the txt2img tab here (with --conventions also "
                                             "of the Extras cutout and Settings -> LayerDiffuse, beside it)")
    parser.add_argument("--conventions", action="store_true",
                        help="after the cases, check the REST endpoints, the Extras cutout, the settings and the "
                             "panel's defaults (conventions.py); --only plain --conventions runs these alone")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--skip-prepare", action="store_true", help="only copy the extension in again")
    parser.add_argument("--family", choices=("sd15", "sdxl", "flux"), default="sd15",
                        help="checkpoint family: sd15 runs the whole matrix; sdxl (about 17 GB of RAM, run it "
                             "alone) runs attention injection, RGBA img2img and a user LoRA; flux (a Q4_0 GGUF transformer and "
                             "an fp8 T5, about 12 GB on disk and 17 GB of RAM, run it alone) the Flux cases")
    parser.add_argument("--layer-methods", action="store_true",
                        help="with --family sdxl: also the four layer methods and conv injection (6.4 GB more "
                             "weights)")
    args = parser.parse_args(argv)
    if not args.forge_dir:
        parser.error("give --forge-dir or set FORGE_DIR to a Forge checkout")
    forge = Forge(Path(args.forge_dir).resolve())
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.skip_prepare:
        forge.install_extension()
    else:
        # in a child process: writing the random weights holds gigabytes that this process would
        # keep from Forge afterwards (with SDXL, Forge was then killed for want of memory)
        child = multiprocessing.get_context("spawn").Process(target=prepare, args=(forge, cache, args.family, args.layer_methods))
        child.start()
        child.join()
        if child.exitcode:
            parser.exit(1, f"preparing Forge failed (exit code {child.exitcode}); see the output above\n")
    if args.conventions:  # the panel is built at start for the checkpoint selected then
        select_at_start(forge.root, CHECKPOINT_NAMES[args.family])
    server = Server(forge, args.port, cache / f"forge-{forge.commit()}.log")
    results: list[Result] = []
    checks: list[conventions.Check] = []
    listing = ["Forge did not start"]
    try:
        started = server.start()
        log(f"Forge {forge.version()} ({forge.commit()}) up in {started:.0f} s")
        listing = local_model_listed(server.url)
        log(f"cutout dropdowns list local:{LOCAL_SEGMENTER}: {'yes' if not listing else listing}")
        modules = [flux_files.MODULES[m] for m in ("vae", "clip_l", "t5")] if args.family == "flux" else []
        options = {"sd_model_checkpoint": CHECKPOINT_NAMES[args.family], "live_previews_enable": False,
                   "samples_format": "png"}
        if forge.generation >= 2:  # early Forge has no such setting, and its API refuses unknown ones
            options["forge_additional_modules"] = modules
        requests.post(f"{server.url}/sdapi/v1/options", timeout=600, json=options).raise_for_status()
        if args.family == "sd15":
            # stealth infotext: current Forge only (early Forge never had it, Neo removed it)
            # and hires fix without an upscaler model on Neo, which removed the latent upscalers
            # (and Lanczos: it lists only "None" and ESRGAN, a download)
            controlnets = requests.get(f"{server.url}/controlnet/model_list", timeout=120).json()["model_list"]
            cases: list[Case] = matrix(controlnet_files.host_name(cache / CONTROLNET, controlnets),
                                       stealth=forge.generation == 2,
                                       upscaler="None" if forge.generation == 3 else "Latent")
        else:
            cases = (sdxl_matrix(args.layer_methods) if args.family == "sdxl"
                     else flux_matrix(nan_with_automatic=forge.generation == 2))
        outputs = forge.outputs(server.url)
        # the first call of a fresh Forge moves models and warms caches: not part of the baseline
        warm = time.monotonic()
        requests.post(f"{server.url}/sdapi/v1/txt2img", json={**cases[0].payload, "save_images": False},
                      timeout=3600).raise_for_status()
        log(f"warm-up call: {time.monotonic() - warm:.0f} s")
        if args.only:  # the plain call stays: it is the baseline of the ratios
            cases = [c for c in cases if c is cases[0] or any(o.lower() in c.name.lower() for o in args.only)]
        restoration = Restoration(server.url)
        done: dict[str, Result] = {}
        for case in cases:
            log(f"case: {case.name}")
            result = run_case(case, server.url, server, outputs, done)
            results.append(result)
            done[case.name] = result
            if case.chain:
                result.restored = "(chained)"
            else:
                result.restored = restoration.check()
                if result.restored != "same":
                    result.failures.append(f"the plain call after it: {result.restored}")
            result.peak_gb = server.peak_memory_gb()
            log(f"  HTTP {result.http}, {result.seconds:.0f} s, plain after: {result.restored}, "
                f"Forge's peak memory {result.peak_gb:.1f} GB, {'ok' if not result.failures else result.failures}")
        if args.conventions:
            checks = conventions.run_checks(server.url, cache / "conventions", outputs, restoration)
        if args.screenshot:
            target = Path(args.screenshot)
            shots = [(_open_panel, target)]
            if args.conventions:
                shots += [(_open_extras_cutout, target.with_name(target.stem + "-extras.png")),
                          (_open_settings, target.with_name(target.stem + "-settings.png"))]
            for show, target in shots:
                try:
                    _capture(server.url, target, show)
                except Exception as exc:  # a screenshot is a by-product: the table still counts
                    log(f"no screenshot {target.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        server.stop()
    baseline = results[0].seconds if results and not results[0].case.layer else 0.0
    size = "128x128" if args.family == "flux" else "512x512"
    print(f"\nForge {forge.version()} ({forge.commit()}), generation {forge.generation}, "
          f"{time.strftime('%Y-%m-%d')}; Euler, 2 steps, {size} unless stated; random weights\n")
    print(table(results, baseline))
    if checks:
        print("\n" + conventions.table(checks))
    if args.json:
        Path(args.json).write_text(json.dumps([{
            "case": r.case.name, "http": r.http, "seconds": round(r.seconds, 1), "failures": r.failures,
            "main": [s.short() for s in r.main], "saved": [(n, s.short()) for n, s in r.saved],
            "restored": r.restored, "peak_gb": round(r.peak_gb, 2), "tracebacks": r.tracebacks,
            "notes": r.notes} for r in results] + [{
            "convention": c.name, "seconds": round(c.seconds, 1), "failures": c.failures, "detail": c.detail,
            "restored": c.restored} for c in checks], indent=1))
    failed = [r for r in results if r.failures] + [c for c in checks if c.failures]
    if listing:
        print(f"\nFAILED: {'; '.join(listing)}")
    return 1 if failed or listing or not results else 0


if __name__ == "__main__":
    sys.exit(main())
