"""Qwen-VL processors without torchvision.

The Qwen pipelines' processor (`processor/` of the model) holds a tokenizer, an image processor
and a video processor; transformers builds the video processor only with torchvision, which
this library does not require, and then refuses to load the processor at all. The pipelines
never use video: without torchvision the processor is built here from the tokenizer and the
PIL image processor of the same folder, and handed to `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def without_video(processor_cls: type) -> type:
    """`processor_cls` that accepts having no video processor (images and text are unchanged)."""
    class Processor(processor_cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    # diffusers records a component's library by its module: the published models' is transformers
    Processor.__name__, Processor.__qualname__, Processor.__module__ = (processor_cls.__name__,) * 2 + ("transformers",)
    return Processor


def processor_kwargs(model: str, processor_class: str, local_files_only: bool) -> dict[str, Any]:
    """`{"processor": ...}` to pass to a Qwen pipeline's `from_pretrained` when torchvision is
    missing (built from the model's `processor/` folder), else {} (transformers loads it)."""
    if importlib.util.find_spec("torchvision") is not None:
        return {}
    import transformers
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    options = dict(subfolder="processor", local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(model, **options)
    images = Qwen2VLImageProcessorPil.from_pretrained(model, **options)
    cls = without_video(getattr(transformers, processor_class))
    return {"processor": cls(image_processor=images, tokenizer=tokenizer, video_processor=None,
                             chat_template=getattr(tokenizer, "chat_template", None))}


def save_processor(processor: Any, folder: str) -> None:
    """Write a processor without a video processor as the model's `processor/` folder holds one."""
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)

