"""Deployment: ONNX export of AdaViT at a fixed setting (gate, ATS, top-k and gathers in the graph),
ONNX Runtime sessions in fp32 or int8, and the `adavit export` command.

May import: core, weights, data.
"""
from .graph import OUTPUTS, export_onnx
from .runtime import OrtModel

__all__ = ["OUTPUTS", "OrtModel", "export_onnx"]
