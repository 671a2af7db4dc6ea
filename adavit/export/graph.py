"""AdaViT -> ONNX at one fixed setting, with every data-dependent step inside the graph.

The exporter is TorchScript tracing (`torch.onnx.export(..., dynamo=False)`), chosen because:
- at a fixed top-k setting every token count is a function of the input size alone, so the Python
  ints the model computes (`int(split.sum())`, the kept-token budget) are constants of the graph, which
  is exactly what tracing records; torch.export would have to treat them as data-dependent sizes;
- it needs no extra package (the dynamo exporter needs onnxscript) and produces a plain opset-17
  graph that ONNX Runtime fuses well (LayerNormalization is one op from opset 17 on).
The gate's ranking and ATS's ordering use stable sorts, which the stock exporter refuses; ONNX's TopK
is stable by definition (equal values keep index order), so `stable_sort_symbolics` maps them to it.
The batch axis stays dynamic. `sample` mode keeps a data-dependent number of tokens per image, so a
traced graph cannot hold it: `export_onnx` refuses it.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.onnx import JitScalarType
from torch.onnx.symbolic_helper import _get_const

from ..core.config import Settings
from ..core.model import AdaViT

OPSET = 17
INPUT = "images"
# logits; tokens each stage ran on (CLS incl.); stage-0 token boxes (x0, y0, x1, y1 input px);
# for each sampler, the stage-0 index of every token it kept (-2: the fused token)
OUTPUTS = ("logits", "tokens_per_stage", "boxes", "kept1", "kept2")
# element types ONNX Runtime's CPU TopK takes; other keys (AdaViT sorts an int8 mask) are cast to int64
TOPK_TYPES = (JitScalarType.FLOAT, JitScalarType.DOUBLE, JitScalarType.INT64, JitScalarType.INT)


class Exportable(nn.Module):
    """AdaViT's own tokenize -> run -> classify (what `AdaViT.forward` runs) at fixed settings, returning
    tensors only, as an ONNX graph must."""

    def __init__(self, model: AdaViT, settings: Settings):
        super().__init__()
        self.model = model
        self.settings = settings

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens, layout = self.model.tokenize(images, self.settings.fine_ratio)
        out = self.model.run(tokens, layout, self.settings)
        kept = [sel.src for sel in out.selections[1:]] + [out.tokens.src]  # what each sampler let through
        return (self.model.classify(out.tokens), torch.stack(out.counts, 1), layout.boxes, *kept)


def _sort(g, x, *args):
    """aten::sort (stable or not) as ONNX TopK over the whole axis: ties keep their index order."""
    *_, dim, descending = args  # aten::sort(x, dim, descending) or aten::sort.stable(x, stable, dim, descending)
    dim = _get_const(dim, "i", "dim")
    kind = JitScalarType.from_value(x)
    cast = kind not in TOPK_TYPES  # int64 keys sort like the int8 / bool ones
    keys = g.op("Cast", x, to_i=JitScalarType.INT64.onnx_type()) if cast else x
    n = g.op("Gather", g.op("Shape", keys), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)))
    values, indices = g.op("TopK", keys, n, axis_i=dim, largest_i=int(bool(_get_const(descending, "b", "descending"))),
                           sorted_i=1, outputs=2)
    return (g.op("Cast", values, to_i=kind.onnx_type()) if cast else values), indices


def _argsort(g, x, *args):
    return _sort(g, x, *args)[1]


@contextlib.contextmanager
def stable_sort_symbolics(opset: int = OPSET) -> Iterator[None]:
    """Map aten::sort / aten::argsort (stable or not) to TopK during one export, then restore the stock ones."""
    names = {"aten::sort": _sort, "aten::argsort": _argsort}
    for name, fn in names.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in names:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


@dataclass(frozen=True)
class Exported:
    path: Path
    settings: Settings
    tokens_per_stage: tuple[int, ...]
    opset: int


def check_exportable(settings: Settings) -> None:
    if settings.mode == "sample":
        raise ValueError(
            "sample mode keeps a data-dependent number of tokens per image, which a traced ONNX graph "
            "cannot hold (it would freeze the counts of the example image); export --mode topk (the default)"
        )


def export_onnx(model: AdaViT, path: str | Path, settings: Settings, opset: int = OPSET,
                metadata: dict | None = None) -> Exported:
    """Write `model` at `settings` as one ONNX file with a dynamic batch axis; returns what was written.

    The settings, outputs and any `metadata` are stored in the file's metadata_props (key "adavit")."""
    check_exportable(settings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = Exportable(model.eval(), settings).eval()
    example = torch.zeros(2, 3, settings.resolution, settings.resolution)
    with torch.no_grad():
        counts = wrapper(example)[1][0]  # fills the position-grid cache: the resampled grid becomes a constant
        with stable_sort_symbolics(opset), _quiet_tracer():
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT], output_names=list(OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)},
            )
    _set_metadata(path, {"settings": settings.to_dict(), "outputs": list(OUTPUTS), **(metadata or {})})
    return Exported(path, settings, tuple(int(c) for c in counts), opset)


def export_plain(vit: nn.Module, path: str | Path, resolution: int, opset: int = OPSET) -> Path:
    """A plain (full-token) timm ViT as ONNX, same input name and dynamic batch: the baseline in ONNX Runtime."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(vit.eval(), (torch.zeros(2, 3, resolution, resolution),), str(path), dynamo=False,
                          opset_version=opset, input_names=[INPUT], output_names=["logits"],
                          dynamic_axes={INPUT: {0: "batch"}, "logits": {0: "batch"}})
    return path


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Tracing warns at each Python int the model reads from a tensor; at a fixed setting those are the
    graph's constants by design (the equivalence tests check the result)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _set_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "adavit", json.dumps(meta)
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> dict:
    """The "adavit" metadata an export wrote ({} for other ONNX files)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((json.loads(p.value) for p in proto.metadata_props if p.key == "adavit"), {})
