"""What LayerDiffuse remembers about one Forge generation job (kept on the processing object).

Forge swallows exceptions raised in script hooks and carries on without the script's effect,
so a failure would otherwise only show in the server log. `Job.fail` makes it visible where the
user looks: the comments under the gallery, the infotext, and the log. Forge's API response
has no comments, so everything LayerDiffuse tells the user also goes into the infotext:
`layerdiffusion_error` (LayerDiffuse switched off), `layerdiffusion_cutout_error` (the cutout
switched off) and `layerdiffusion_note` (remarks on single images, such as one the cutout kept).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..cutout.options import CutoutSettings
from ..methods import Family
from ..params import LayerDiffuseParams
from .host import ForgeHost

log = logging.getLogger("lib_layerdiffuse.forge")

ATTRIBUTE = "layerdiffuse_job"
ERROR_KEY = "layerdiffusion_error"
CUTOUT_ERROR_KEY = "layerdiffusion_cutout_error"
NOTE_KEY = "layerdiffusion_note"
UNPINNED_KEY = "layerdiffusion_unpinned"


@dataclass
class Job:
    params: Optional[LayerDiffuseParams]
    host: Optional[ForgeHost] = None
    family: Optional[Family] = None
    error: Optional[str] = None
    sampling_passes: int = 0
    latents: Optional[torch.Tensor] = None  # model-space latents of the current batch
    outputs: dict[int, np.ndarray] = field(default_factory=dict)  # index -> straight RGBA, HxWx4 uint8
    notes: list[str] = field(default_factory=list)
    cutout: Optional[CutoutSettings] = None
    cutout_error: Optional[str] = None

    @property
    def active(self) -> bool:
        """LayerDiffuse runs in this job."""
        return self.params is not None and self.params.enabled and self.error is None

    @property
    def cutting(self) -> bool:
        """The cutout runs on this job's images."""
        return self.cutout is not None and self.cutout.enabled and self.cutout_error is None

    def fail_cutout(self, p: Any, message: str) -> None:
        """Switch the cutout off for this job (LayerDiffuse itself goes on) and say why."""
        if self.cutout_error is None:
            self.cutout_error = message
            _tell(p, f"the cutout did not run: {message}", f"LayerDiffuse: the cutout did not run: {message}")
            _infotext(p, CUTOUT_ERROR_KEY, message)

    def fail(self, p: Any, message: str) -> None:
        """Switch LayerDiffuse off for this job and say why, once."""
        if self.error is not None:
            return
        self.error = message
        text = f"LayerDiffuse did not run: {message}"
        log.error(text)
        _tell(p, text, text)
        _infotext(p, ERROR_KEY, message)

    def note(self, p: Any, message: str) -> None:
        """A visible remark that does not stop LayerDiffuse (shown once per job); in the
        infotext after the job's earlier remarks."""
        if message in self.notes:
            return
        self.notes.append(message)
        _tell(p, message, f"LayerDiffuse: {message}")
        _infotext(p, NOTE_KEY, " | ".join(self.notes))


def _tell(p: Any, line: str, comment: str) -> None:
    """A line in the console (what server admins and the rig read) and a comment under the
    gallery."""
    print(f"[LayerDiffuse] {line}")
    add_comment = getattr(p, "comment", None)
    if callable(add_comment):
        add_comment(comment)


def _infotext(p: Any, key: str, value: str) -> None:
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        extra[key] = value


def job_of(p: Any) -> Optional[Job]:
    return getattr(p, ATTRIBUTE, None)


def start_job(p: Any, job: Job) -> Job:
    setattr(p, ATTRIBUTE, job)
    return job
