"""int8 parameters: what makes an OpenVINO int8 export, small enough to ship beside a checkpoint.

NNCF's post-training quantisation of a model depends on data in one place only: the ranges of its
activation quantisers (the low/high inputs of each ``FakeQuantize``). Where the quantisers go follows
from the graph, and the weights' quantisers take their ranges from the weights. So an int8 export is
fully described by the fp32 model plus the ranges of every quantiser: under 300 KB per shipped model, where
the export itself is 2-13 MB. A machine without the training images (a Hugging Face Space without the
dataset) quantises the fp32 export on any one input, which places the quantisers, then writes the shipped
ranges into them. ``graph_digest`` (the operations in order, their output types and shapes, every
constant's bytes) must then equal the digest of the export that was checked against eager PyTorch on val
when the parameters were made, or the parameters are not used.

The checked graph keeps each weight in float behind its quantiser, with both ranges shipped, so nothing in
it is computed on the machine that rebuilds it. Rounding the weights to int8 values ahead of time is left
to the served copy: it is arithmetic over millions of values, and another CPU may round a few of them the
other way (the shipped ResUNet's pre-rounded graph, made on a Zen 4, differed on a Xeon), which would refuse
parameters that fit.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

#: Inputs 1-4 of a FakeQuantize: input low, input high, output low, output high.
_RANGE_PORTS = (1, 2, 3, 4)
#: 2: every quantiser's ranges (weights' too), values as base64 of their little-endian bytes.
FORMAT = 2


def graph_digest(model: Any, constants: bool = True) -> str:
    """sha256 of an ``openvino.Model``: operations in topological order with their output element types
    and shapes, and (``constants``) every constant's bytes; without them, the structure alone."""
    digest = hashlib.sha256()
    for op in model.get_ordered_ops():
        digest.update(op.get_type_name().encode())
        for output in op.outputs():
            digest.update(f"{output.get_element_type()}{output.get_partial_shape()};".encode())
        if constants and op.get_type_name() == "Constant":
            digest.update(np.ascontiguousarray(op.get_data()).tobytes())
    return digest.hexdigest()


def encode_values(data: np.ndarray) -> str:
    """An array's values as base64 text of its little-endian bytes (its dtype and shape are kept apart)."""
    little = np.ascontiguousarray(data, dtype=np.asarray(data).dtype.newbyteorder("<"))
    return base64.b64encode(little.tobytes()).decode("ascii")


def decode_values(entry: dict) -> np.ndarray:
    """The array of one range entry (``extract``'s ``ranges``); ``ValueError`` when it is malformed."""
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    try:
        raw = base64.b64decode(entry["values"], validate=True)
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(entry["shape"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"an int8 range is malformed: {err}") from None


def _range_constants(model: Any) -> list[tuple[int, Any]]:
    """(position in ``get_ordered_ops()``, node) of every constant feeding a FakeQuantize's ranges."""
    out = []
    for index, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() != "Constant":
            continue
        targets = op.output(0).get_target_inputs()
        if any(t.get_node().get_type_name() == "FakeQuantize" and t.get_index() in _RANGE_PORTS for t in targets):
            out.append((index, op))
    return out


def extract(quantised: Any) -> dict:
    """The parameters of one quantised ``openvino.Model`` (one part of a served model)."""
    ranges = []
    for index, op in _range_constants(quantised):
        data = np.asarray(op.get_data())
        ranges.append({"op": index, "dtype": str(data.dtype), "shape": list(data.shape), "values": encode_values(data)})
    return {
        "structure": graph_digest(quantised, constants=False),
        "digest": graph_digest(quantised),
        "ranges": ranges,
    }


def apply(placed: Any, params: dict) -> Any:
    """``placed`` (the fp32 export quantised on any input: quantisers in place, ranges from that input)
    with the parameters' ranges written in, in place. Raises ``ValueError`` when the result is not the
    graph the parameters were taken from (another NNCF or OpenVINO version may place them otherwise)."""
    import openvino as ov

    if graph_digest(placed, constants=False) != params["structure"]:
        raise ValueError("the quantised graph differs from the one the int8 parameters were made for")
    ops = placed.get_ordered_ops()
    for entry in params["ranges"]:
        old = ops[entry["op"]]
        values = decode_values(entry)
        if old.get_type_name() != "Constant" or tuple(old.get_output_shape(0)) != values.shape:
            raise ValueError("an int8 range does not fit the quantised graph")
        new = ov.opset13.constant(values)
        new.set_friendly_name(old.get_friendly_name())
        for target in list(old.output(0).get_target_inputs()):
            target.replace_source_output(new.output(0))
    placed.validate_nodes_and_infer_types()
    if graph_digest(placed) != params["digest"]:
        raise ValueError("the int8 export rebuilt from its parameters is not the one that was checked")
    return placed
