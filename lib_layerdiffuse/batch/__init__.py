"""Batch production of transparent assets: job files, a resumable manifest and alpha checks."""

from .jobfile import Item, Job, JobError, load_job
from .manifest import Manifest
from .qa import AlphaReport, check_alpha, trim
from .runner import BatchSummary, run_job

__all__ = ["AlphaReport", "BatchSummary", "Item", "Job", "JobError", "Manifest", "check_alpha", "load_job",
           "run_job", "trim"]
