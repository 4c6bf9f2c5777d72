"""Tiny ONNX segmentation models in rembg's layout, built at test time (needs the `onnx` package).

The graph is `sigmoid(conv1x1(input))`: input `[1, 3, S, S]` (ImageNet-normalised RGB, as rembg
feeds U2-Net-like models), output `[1, 1, S, S]`. With the default weights it answers "red minus
blue": red subjects on blue backgrounds come out white, the background black. `logits=True`
leaves out the sigmoid (as BiRefNet exports do); `input_shape` replaces the input's shape (named
dimensions are free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union


def write_segmenter(path: Union[str, Path], size: int = 320, weights: Sequence[float] = (3.0, 0.0, -3.0),
                    bias: float = 0.0, logits: bool = False, input_shape: Optional[Sequence] = None) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(1, 3, 1, 1), "w")
    b = numpy_helper.from_array(np.asarray([bias], np.float32), "b")
    shape = list(input_shape) if input_shape is not None else [1, 3, size, size]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["output" if logits else "logits"])]
    if not logits:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    graph = helper.make_graph(
        nodes, "tiny_segmenter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [shape[0], 1, *shape[2:]])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
