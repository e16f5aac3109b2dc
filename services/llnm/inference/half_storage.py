"""ONNX files whose weights are stored in float16 and computed in float32.

A shipped model lives in git and in every worker image, so its size matters; its arithmetic does not
have to change for that. Each float32 weight is stored as `<name>__fp16` (IEEE half) followed by a
`Cast` to float32 under the original name: ONNX Runtime (in process and in Triton's onnxruntime
backend) folds the casts when it loads the session, so inference runs in float32 exactly as before,
at the cost of rounding each weight once (relative error <= 2**-11). Half the bytes on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HALF_SUFFIX = "__fp16"
#: tensors smaller than this stay float32 (scalars, shapes: nothing to gain, and some are read as constants)
MIN_ELEMENTS = 16


def store_weights_in_half(path: Path) -> Path:
    """Rewrite the ONNX file at `path` with its float32 weights stored as float16 (in place)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= MIN_ELEMENTS:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + HALF_SUFFIX)
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                          name=init.name + "__cast"))
        else:
            kept.append(init)
    nodes = casts + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file as float32 under its original name, whether stored in half or not."""
    import onnx
    from onnx import numpy_helper

    weights = {}
    for init in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(init)
        if init.name.endswith(HALF_SUFFIX):
            weights[init.name[: -len(HALF_SUFFIX)]] = array.astype(np.float32)
        else:
            weights[init.name] = array.copy()
    return weights
