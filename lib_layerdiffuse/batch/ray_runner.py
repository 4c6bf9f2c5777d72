"""The same job on a Ray cluster: one actor per worker (per GPU on a GPU cluster) holds the loaded
engine, chunks of items (grouped as on one machine) go to whichever actor is free, and the
driver alone writes the output folder and the manifest, so the workers need no shared disk.

A worker that dies (its machine lost, the process killed) takes only its chunk in flight with
it: the chunk goes back to the queue, a fresh actor takes the dead one's place, and after
`retries` deaths of the same chunk the run stops with the reason. A stopped run resumes from
the manifest like a local one. Ray is imported here only.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from ..atomic import write_atomic
from .jobfile import Item, Job
from .runner import BatchSummary, _batches, _chunks, _generate_together, _make, open_run

RAY_BATCH = 4  # items per chunk sent to a worker unless --batch-size says otherwise


class _Worker:
    """Holds one engine; makes chunks of items into its own temporary folder and hands back
    each record with the bytes of its files."""

    def __init__(self, engine_for: Callable[[str], Any], model: str):
        self.engine = engine_for(model)
        self.batches = _batches(self.engine)

    def make(self, job: Job, chunk: list[Item]) -> list[tuple[dict, dict[str, bytes]]]:
        out = []
        with tempfile.TemporaryDirectory() as folder:
            firsts = _generate_together(self.engine, chunk) if self.batches else [None] * len(chunk)
            for item, first in zip(chunk, firsts):
                record = _make(job, item, self.engine, Path(folder), first)
                out.append((record, {f["name"]: (Path(folder) / f["name"]).read_bytes() for f in record["files"]}))
        return out


def run_job_on_ray(job: Job, out: "str | Path", engine_for: Callable[[str], Any], address: Optional[str] = "auto",
                   workers: Optional[int] = None, gpus_per_worker: Optional[float] = None,
                   batch_size: Optional[int] = None,
                   retries: int = 2, progress: bool = True) -> BatchSummary:
    """Run `job` on the Ray cluster at `address` ("auto": the running one; None: start a local
    one). `engine_for(model)` runs on the workers, so it must be picklable (a module-level
    function or a functools.partial of one). `workers` defaults to the cluster's GPUs (one
    actor each) or 2 without GPUs."""
    import ray

    start = time.perf_counter()
    if any(it.decompose for it in job.items):
        raise ValueError(f"{job.path}: [[decompose]] entries run on one machine (run_job), not on Ray")
    out, manifest, summary, todo = open_run(job, out)
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or max(gpus, 1 if gpus else 2)
        per_worker = gpus_per_worker if gpus_per_worker is not None else (1 if gpus else 0)
        actor = ray.remote(num_gpus=per_worker, num_cpus=0 if per_worker else 1)(_Worker)
        queue = deque(_chunks(todo, batch_size or RAY_BATCH))
        deaths: dict[int, int] = {}
        idle = [actor.remote(engine_for, job.model) for _ in range(min(count, len(queue)))]
        running: dict[Any, tuple[Any, list[Item]]] = {}
        bar = tqdm(total=len(todo), desc="batch on Ray", unit="item", disable=not progress)
        try:
            while queue or running:
                while queue and idle:
                    worker, chunk = idle.pop(), queue.popleft()
                    running[worker.make.remote(job, chunk)] = (worker, chunk)
                [done], _ = ray.wait(list(running), num_returns=1)
                worker, chunk = running.pop(done)
                try:
                    results = ray.get(done)
                except ray.exceptions.RayActorError as exc:
                    deaths[id(chunk)] = deaths.get(id(chunk), 0) + 1
                    if deaths[id(chunk)] > retries:
                        raise RuntimeError(f"a Ray worker died {deaths[id(chunk)]} times on the items "
                                           f"{', '.join(it.key for it in chunk)}; last: {exc}") from None
                    queue.appendleft(chunk)
                    idle.append(actor.remote(engine_for, job.model))
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                for record, files in results:
                    for entry in record["files"]:
                        digest = write_atomic(out / entry["name"], lambda p, data=files[entry["name"]]:
                                              p.write_bytes(data))
                        if digest != entry["sha256"]:
                            raise RuntimeError(f"{entry['name']} changed on its way from the worker")
                    manifest.append(record)
                    summary.count(record)
                    bar.update(1)
                idle.append(worker)
        finally:
            bar.close()
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary
