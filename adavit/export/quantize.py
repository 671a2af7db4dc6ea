"""int8 weights for an exported graph: ONNX Runtime's dynamic quantization of every MatMul with a constant
weight (the Linear layers); activations are quantized per call, so no calibration data is needed.

Attention's activation x activation products, the gate, the patch convolution and ATS's sorting and
gathers stay fp32. Weights are per output channel, which keeps the ViT's few large-magnitude channels
from swamping the rest of a matrix's scale.
"""
from __future__ import annotations

import logging
from pathlib import Path

PRECISIONS = ("fp32", "int8")


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Write the int8 version of the ONNX file `src` to `dst` (metadata kept)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # it advises a pre-processing pass our graph does not need
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(quiet)
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    proto = onnx.load(str(dst))
    if {p.key for p in proto.metadata_props} != set(meta):
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(dst))
    return dst
