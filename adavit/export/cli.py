"""`adavit export`: the model at one setting as an ONNX file for ONNX Runtime, checked against PyTorch.

    adavit export --onnx PATH [--fine-ratio F --keep1 F --keep2 F] [--fuse] [--resolution N]
                  [--checkpoint PATH] [--quantize int8] [--check N]

The graph holds the patch gate, ATS scoring, top-k and the gathers; the batch axis is dynamic. Outputs:
logits, tokens per stage, stage-0 token boxes and the kept token indices of each sampler (see
adavit.export.graph). After writing, it runs N fixed val images (random ones without the data) through
both runtimes and prints how they agree; an fp32 export that disagrees exits with status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from ..core.config import MODES, Settings
from ..weights import checkpoint
from .check import compare, fixed_images
from .graph import check_exportable, export_onnx
from .quantize import PRECISIONS, quantize_int8
from .runtime import OrtModel


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adavit export", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="write the ONNX model here (e.g. adavit.onnx)")
    p.add_argument("--checkpoint", default=None, help=f"weights (default {checkpoint.SHIPPED})")
    s = p.add_argument_group("setting (default: the checkpoint card's default_settings)")
    s.add_argument("--fine-ratio", type=float, default=None)
    s.add_argument("--keep1", type=float, default=None)
    s.add_argument("--keep2", type=float, default=None)
    s.add_argument("--mode", choices=MODES, default=None, help="topk; sample cannot be exported (it says why)")
    s.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--resolution", type=int, default=None, help="input side in px, fixed in the graph")
    p.add_argument("--quantize", choices=PRECISIONS[1:], default=None,
                   help="int8: ONNX Runtime dynamic quantization of the Linear weights")
    p.add_argument("--check", type=int, default=32, help="compare with PyTorch on this many images (0: skip)")
    return p


def settings_for(card: dict, args: argparse.Namespace) -> Settings:
    base = Settings(**card["default_settings"]) if card.get("default_settings") else Settings()
    given = {k: getattr(args, k) for k in ("fine_ratio", "keep1", "keep2", "mode", "fuse", "resolution")}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.onnx)
    try:
        if out.suffix != ".onnx":
            raise ValueError(f"--onnx must name a .onnx file, got {out}")
        if args.check < 0:
            raise ValueError(f"--check must be 0 or more images, got {args.check}")
        weights = Path(args.checkpoint) if args.checkpoint else checkpoint.SHIPPED
        settings = settings_for(checkpoint.read_card(weights), args)
        check_exportable(settings)  # before the model loads
        model = checkpoint.load_model(weights)
        meta = {"checkpoint": weights.name, "precision": args.quantize or "fp32"}
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx" if args.quantize else out
            exported = export_onnx(model, fp32, settings, metadata=meta)
            if args.quantize:
                quantize_int8(fp32, out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {meta['precision']}, opset {exported.opset}, dynamic batch): {settings}")
    print(f"tokens per stage (CLS incl.): {' / '.join(map(str, exported.tokens_per_stage))}")
    if not args.check:
        return 0
    images, source = fixed_images(settings.resolution, args.check)
    agreement = compare(model, settings, OrtModel(out, threads=torch.get_num_threads()), images)
    print(f"ONNX Runtime vs PyTorch on {source}: {agreement.describe()}")
    if args.quantize:
        print("(int8 is compared for information: its logits and kept tokens are expected to drift)")
        return 0
    return 0 if agreement.exact else 1
