"""Progress of long work, reported as `on_progress(stage, done, total)`.

The engine reports "Sampling" once per denoising step and "Decoding" once per image. A
cutout reports its stages as one line: `total` is the number of stages and `done` grows
through them (fractionally, tile by tile), with the stage and tile in `stage`, so a bar moves
forward only and says what is running.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

ProgressCallback = Callable[[str, float, float], None]
TileProgress = Optional[Callable[[int, int], None]]


class Stages:
    """The stages of one piece of work, in order; `start(name)` gives that stage's tile callback."""

    def __init__(self, names: Sequence[str], report: Optional[ProgressCallback]):
        self.names = list(names)
        self.report = report

    def start(self, name: str) -> TileProgress:
        index = self.names.index(name)
        total = len(self.names)
        if self.report is None:
            return None
        self.report(name, index, total)

        def tile(done: int, count: int) -> None:
            detail = f"{name} ({done}/{count})" if count > 1 else name
            self.report(detail, index + done / max(count, 1), total)

        return tile

    def finish(self, name: str = "Done") -> None:
        if self.report is not None:
            self.report(name, len(self.names), len(self.names))


class ProgressBar:
    """A tqdm bar fed by `ProgressCallback` reports: the stage is its description."""

    def __init__(self, unit: str = "stage", leave: bool = False):
        self.unit, self.leave = unit, leave
        self.bar = None

    def __call__(self, stage: str, done: float, total: float) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit=self.unit, leave=self.leave,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self.bar.set_description_str(stage, refresh=False)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
