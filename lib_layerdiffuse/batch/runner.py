"""Running a job: the items not yet done, grouped by method and size, each generated, checked,
written atomically and recorded in the manifest before the next one starts."""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from ..atomic import write_atomic
from ..images import read_image_file, save_png
from ..methods import Method
from .jobfile import IMAGES, SEED_RANGE, Item, Job
from .manifest import Manifest
from .qa import check_alpha, trim

ENGINE_ARGS = {"negative_prompt": "negative_prompt", "steps": "steps", "cfg": "cfg",
               "width": "width", "height": "height", "sampler": "sampler", "weight": "weight", "stop_at": "stop_at",
               "strength": "strength", "fg_prompt": "fg_prompt", "bg_prompt": "bg_prompt",
               "blend_prompt": "blend_prompt", "fg": "fg", "bg": "bg", "blend": "blend", "init": "init_image"}


@dataclass
class BatchSummary:
    made: list[str] = field(default_factory=list)  # keys generated in this run
    skipped: list[str] = field(default_factory=list)  # keys already done and intact
    flagged: list[str] = field(default_factory=list)  # keys whose images failed the alpha checks
    retries: int = 0
    seconds: float = 0.0

    def count(self, record: dict) -> None:
        """Add a finished item's manifest record."""
        self.made.append(record["key"])
        self.retries += record["attempts"] - 1
        if any(f["qa"]["flags"] for f in record["files"] if f.get("qa")):
            self.flagged.append(record["key"])

    def line(self) -> str:
        return (f"{len(self.made)} made, {len(self.skipped)} already done, {len(self.flagged)} flagged by the "
                f"alpha checks, {self.retries} retries, {self.seconds:.1f} s")


def run_job(job: Job, out: "str | Path", engine_for: Callable[[str], Any], progress: bool = True,
            batch_size: Optional[int] = None,
            decomposer_for: Optional[Callable[[str], Any]] = None) -> BatchSummary:
    """Make every item of `job` that `out`'s manifest does not list as done. `engine_for(model)`
    gives the generation engine (a `LayerDiffuse`), asked for once and only when there is work.
    Items that differ only in prompt and seed are sampled `batch_size` at a time when the engine
    can (`generate_each`: one-frame methods, no init image); each still gets its own seed's image.
    `batch_size` defaults to `default_batch_size()`; a batch that runs out of device memory is
    halved (and the smaller size kept for the rest of the run) until it fits. `[[decompose]]`
    items run first, one at a time, on `decomposer_for(job.layers_model)` (default: load it with
    `LayerDecomposer.from_model`)."""
    start = time.perf_counter()
    out, manifest, summary, todo = open_run(job, out)
    splits = [it for it in todo if it.decompose]
    todo = [it for it in todo if not it.decompose]
    if splits:
        _decompose_all(job, splits, out, manifest, summary, decomposer_for, progress)
    todo.sort(key=lambda it: tuple(str(g) for g in it.group))  # stable: job order inside a group
    engine = engine_for(job.model) if todo else None
    batch_size = batch_size or default_batch_size()
    bar = tqdm(total=len(todo), desc="batch", unit="item", disable=not progress)
    chunks = deque(_chunks(todo, batch_size if _batches(engine) else 1))

    def finish(item: Item, made: tuple) -> None:
        manifest.append(_write(job, item, out, *made))
        summary.count(manifest.records[item.key])
        bar.update(1)

    # PNG encoding, hashing and the manifest run on one writer thread, in order, while the next
    # chunk samples; everything handed to it is written before run_job returns or raises
    writes: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="layerdiffuse-batch-writer") as writer:
        try:
            fits = batch_size  # lowered when a batch runs out of device memory, for the rest of the run
            while chunks:
                chunk = chunks.popleft()
                if len(chunk) > fits:
                    chunks.extendleft(reversed([chunk[i:i + fits] for i in range(0, len(chunk), fits)]))
                    continue
                method, width, height = chunk[0].group
                bar.set_description(f"{method or 'default method'} {width or 'default'}x{height or 'default'}")
                try:
                    firsts = _generate_together(engine, chunk)
                except Exception as exc:
                    if not _out_of_memory(exc) or len(chunk) == 1:
                        raise
                    fits = len(chunk) // 2  # too large for the device: the same items in smaller batches
                    chunks.appendleft(chunk)
                    continue
                for item, first in zip(chunk, firsts):
                    made = _attempt(job, item, engine, first)
                    for done in writes:
                        if done.done():
                            done.result()  # a failed write stops the run here
                    writes.append(writer.submit(finish, item, made))
        finally:
            writer.shutdown(wait=True)
            bar.close()
    for done in writes:
        done.result()
    summary.seconds = time.perf_counter() - start
    return summary


def _decompose_all(job: Job, items: list[Item], out: Path, manifest: Manifest, summary: BatchSummary,
                   decomposer_for: Optional[Callable[[str], Any]], progress: bool) -> None:
    if decomposer_for is None:
        from ..layers.decompose import LayerDecomposer

        decomposer_for = LayerDecomposer.from_model
    decomposer = decomposer_for(job.layers_model)
    for item in tqdm(items, desc="decompose", unit="image", disable=not progress):
        manifest.append(_decompose(job, item, decomposer, out))
        summary.count(manifest.records[item.key])


def _decompose(job: Job, item: Item, decomposer, out: Path) -> dict:
    """Split one image, write its layers (PNG, 1 = bottom) and its PSD atomically; its record,
    with how far the layers put together are from the image and which came out empty."""
    from ..atomic import sha256_file
    from ..layers.files import layered_psd

    started = time.perf_counter()
    s = item.settings
    result = decomposer.decompose(read_image_file(s["image"], "image"), s["layers"], prompt=s.get("prompt", ""),
                                  steps=s.get("steps"), cfg=s.get("cfg"), seed=s["seed"], resolution=s["resolution"])
    empty = set(result.empty)
    files = []
    for i, layer in enumerate(result.layers):
        name = f"{item.key}-layer-{i + 1}.png"
        digest = write_atomic(out / name, lambda path, layer=layer: save_png(layer, path, result.infotext,
                                                                            result.settings))
        files.append({"name": name, "frame": f"layer {i + 1}", "transparent": True, "sha256": digest,
                      "size": list(layer.size), "qa": {"flags": ["empty"] if i in empty else []}})
    psd = layered_psd(list(zip(result.names(), result.layers)), out / f"{item.key}.psd")
    files.append({"name": psd.name, "frame": "psd", "transparent": False, "sha256": sha256_file(psd, progress=False),
                  "size": list(result.source.size)})
    return {"key": item.key, "status": "done", "kind": "decompose", "model": job.layers_model, "settings": s,
            "seed": result.seed, "attempts": 1, "method": "Qwen-Image-Layered", "files": files,
            "layers": result.report(), "infotext": result.infotext,
            "seconds": round(time.perf_counter() - started, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def default_batch_size() -> int:
    """8 on a CUDA device (halved on running out of memory until a batch fits), else 4 (measured
    1.9 to 2.0 times one at a time on a 2-core CPU; larger batches gain little there)."""
    import torch

    return 8 if torch.cuda.is_available() else 4


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text


def open_run(job: Job, out: "str | Path") -> tuple[Path, Manifest, BatchSummary, list[Item]]:
    """The output folder (made if needed), its manifest, a summary counting the items already done
    and intact as skipped, and the items still to make; temporary files of a stopped run are
    removed first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    manifest.remove_partial_files()
    summary = BatchSummary()
    todo = []
    for item in job.items:
        if manifest.done(item.key):
            summary.skipped.append(item.key)
        else:
            todo.append(item)
    return out, manifest, summary, todo


def _batches(engine) -> bool:
    return callable(getattr(engine, "generate_each", None)) and getattr(engine, "family", None) is not None


def _shared(item: Item) -> str:
    """What items must agree on to be sampled together: everything but prompt and seed."""
    return json.dumps({k: v for k, v in item.settings.items() if k not in ("prompt", "seed")}, sort_keys=True)


def _chunks(items: list[Item], size: int) -> list[list[Item]]:
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(_shared(item), []).append(item)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def _generate_together(engine, chunk: list[Item]) -> list[Optional[Any]]:
    """First attempts of a chunk sampled as one batch, or [None] * n where it cannot be."""
    if len(chunk) < 2 or "init" in chunk[0].settings:
        return [None] * len(chunk)
    settings = chunk[0].settings
    method = Method.parse(settings.get("method") or Method.default(engine.family), family=engine.family)
    if method.spec.frame_count != 1:
        return [None] * len(chunk)
    kwargs = _engine_kwargs(settings)
    kwargs.pop("init_image", None)
    return engine.generate_each([(it.settings.get("prompt", ""), it.settings["seed"]) for it in chunk], method,
                                **kwargs)


def _make(job: Job, item: Item, engine, out: Path, first=None) -> dict:
    """Generate one item and write it: its manifest record."""
    return _write(job, item, out, *_attempt(job, item, engine, first))


def _attempt(job: Job, item: Item, engine, first=None) -> tuple:
    """Generate one item, again with the next seed while its alpha fails the checks and retries
    remain (`first`: its first attempt when that was made in a batch). Returns (result, alpha
    reports by image index, seed, attempts, seconds)."""
    started = time.perf_counter()
    seed = item.settings["seed"]
    for attempt in range(1, job.retry + 2):
        result = first if attempt == 1 and first is not None else _generate(engine, item, seed)
        reports = {im.index: check_alpha(np.asarray(im.image)[..., 3], job.checks)
                   for im in result.images if im.transparent and im.image.mode == "RGBA"}
        if all(r.passed for r in reports.values()) or attempt == job.retry + 1:
            break
        seed = (seed + 1) % SEED_RANGE
    return result, reports, seed, attempt, time.perf_counter() - started


def _write(job: Job, item: Item, out: Path, result, reports: dict, seed: int, attempt: int, seconds: float) -> dict:
    """Write an item's images atomically (trimmed on request); its manifest record."""
    started = time.perf_counter()
    files = []
    for im in result.images:
        image = im.image
        if job.trim is not None and im.transparent:
            image = trim(image, job.trim)
        name = f"{item.key}-{im.index:02d}-{im.frame}.png"
        digest = write_atomic(out / name, lambda path, image=image: save_png(image, path, result.infotext,
                                                                            result.settings))
        entry = {"name": name, "frame": im.frame, "transparent": im.transparent, "sha256": digest,
                 "size": list(image.size)}
        if im.index in reports:
            entry["qa"] = reports[im.index].to_dict()
        files.append(entry)
    seconds += time.perf_counter() - started
    return {"key": item.key, "status": "done", "model": job.model, "settings": item.settings, "seed": seed,
            "attempts": attempt, "method": result.method.value, "files": files, "infotext": result.infotext,
            "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _generate(engine, item: Item, seed: int):
    settings = item.settings
    return engine.generate(settings.get("prompt", ""), settings.get("method") or None, seed=seed,
                           **_engine_kwargs(settings))


def _engine_kwargs(settings: dict) -> dict[str, Any]:
    """An item's settings as `generate` keywords (condition images read from their files)."""
    kwargs: dict[str, Any] = {}
    for key, arg in ENGINE_ARGS.items():
        if key not in settings:
            continue
        value = settings[key]
        if key in IMAGES:
            value = read_image_file(value, key)
        if key in ("width", "height") and not value:
            continue  # 0: the engine's default size
        kwargs[arg] = value
    return kwargs

