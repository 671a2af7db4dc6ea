"""The speed table across runtimes: {torch, onnxruntime} x {fp32, int8} x {full-token ViT, AdaViT}.

    adavit bench --runtime onnxruntime [--precision int8]   # that runtime's two cells + the eager fp32 pair
    adavit bench --all [--json PATH]                         # all eight cells

Every cell runs the same weights on the same images, timed in alternating rounds in one process (median
after warm-up), at batch 1 and batch 32, and is also set against timm's eager fp32 full-token forward.
- torch fp32: timm's own forward ("full") and AdaViT eager with `latency.optimize_for_cpu` ("adavit");
  these two are `adavit bench`'s "full" and "adavit".
- onnxruntime: `adavit.export` graphs (AdaViT at the bench setting; timm's ViT for "full") in ONNX Runtime
  (all graph optimisations, sleeping idle threads, as many threads as torch); int8 = its dynamic
  quantization of the Linear weights (adavit.export.quantize).
- torch int8: torch.ao's dynamic int8 Linear (deprecated in torch 2.14, still shipped); in AdaViT the two
  qkv layers ATS scores from stay fp32, because ATS reads their output through a hook on nn.Linear.
GFLOPs are torch's counter on the fp32 eager forward of the same model: an export or int8 runs the same
products (int8 counts multiply-adds in int8).
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.config import Settings
from ..core.model import AdaViT
from ..export.graph import INPUT, export_onnx, export_plain
from ..export.quantize import PRECISIONS, quantize_int8
from ..export.runtime import cpu_session

RUNTIMES = ("torch", "onnxruntime")
MODELS = ("full", "adavit")
REFERENCE = ("torch", "fp32", "full")  # timm's eager fp32 forward: every cell is also compared with it


@dataclass(frozen=True)
class Cell:
    runtime: str
    precision: str
    model: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.runtime, self.precision, self.model)

    def name(self) -> str:
        return f"{self.runtime} {self.precision} {self.model}"


def cells_for(runtime: str | None, precision: str, every: bool) -> list[Cell]:
    """Every cell, or one runtime x precision pair plus the eager fp32 pair it is compared with."""
    if every:
        pairs = [(r, p) for r in RUNTIMES for p in PRECISIONS]
    else:
        pairs = list(dict.fromkeys([("torch", "fp32"), (runtime or "torch", precision)]))
    return [Cell(r, p, m) for r, p in pairs for m in MODELS]


def torch_int8(module: nn.Module, keep_fp32: set[nn.Module] = frozenset()) -> nn.Module:
    """A copy with torch.ao's dynamic int8 Linear layers, except the modules in `keep_fp32`."""
    names = {name for name, m in module.named_modules() if isinstance(m, nn.Linear) and m not in keep_fp32}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation of quantized tensors, once per layer
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), names, dtype=torch.qint8)


def scored_qkv(model: AdaViT) -> set[nn.Module]:
    """The qkv layers ATS reads its scores from (the last block of every stage but the last)."""
    return {stage[-1].attn.qkv for stage in model.stages[:-1]}


def build(cells: list[Cell], model: AdaViT, plain: nn.Module, settings: Settings,
          folder: Path, full_side: int = 224) -> dict[tuple, Callable[[torch.Tensor], object]]:
    """A forward `f(images)` for each cell; ONNX files are written (and int8-quantized) under `folder`."""
    fns: dict[tuple, Callable[[torch.Tensor], object]] = {}
    onnx: dict[tuple[str, str], Path] = {}
    for cell in cells:
        if cell.runtime == "torch":
            net = plain if cell.model == "full" else model
            if cell.precision == "int8":
                net = torch_int8(net, scored_qkv(model) if cell.model == "adavit" else set())
            fns[cell.key] = net if cell.model == "full" else (lambda x, m=net: m(x, settings))
            continue
        fp32 = onnx.get(("fp32", cell.model))
        if fp32 is None:
            fp32 = (export_plain(plain, folder / "full.onnx", full_side) if cell.model == "full"
                    else export_onnx(model, folder / "adavit.onnx", settings).path)
            onnx[("fp32", cell.model)] = fp32
        path = fp32 if cell.precision == "fp32" else quantize_int8(fp32, folder / f"{cell.model}.int8.onnx")
        session = cpu_session(path)
        fns[cell.key] = lambda x, s=session: s.run(None, {INPUT: x.numpy()})
    return fns


def measure_cells(cells: list[Cell], model: AdaViT, plain: nn.Module, settings: Settings,
                  images: dict[str, torch.Tensor], runs: int, timer, gflops: dict[str, float]) -> list[dict]:
    """`timer(fns, runs, warmup)` -> median ms per key; images and gflops: {"full": ..., "adavit": ...} (the same
    photos at each model's side; GFLOPs counted on the fp32 eager forward)."""
    with tempfile.TemporaryDirectory() as tmp:
        print(f"  preparing {len(cells)} cells (ONNX export and int8 quantization where needed) ...", flush=True)
        fns = build(cells, model, plain, settings, Path(tmp), images["full"].shape[-1])
        print(f"  batch 1: {runs} rounds of {len(fns)} forwards ...", flush=True)
        b1 = timer({k: (lambda f=f, x=images[k[2]][:1]: f(x)) for k, f in fns.items()}, runs)
        print(f"  batch {len(images['full'])}: {runs} rounds ...", flush=True)
        bn = timer({k: (lambda f=f, x=images[k[2]]: f(x)) for k, f in fns.items()}, runs, warmup=1)
    ref_b1, ref_bn = b1.get(REFERENCE), bn.get(REFERENCE)
    out = []
    for c in cells:
        row = {**asdict(c), "latency_ms_b1": round(b1[c.key], 2), "latency_ms_b32": round(bn[c.key], 1),
               "gflops": round(gflops[c.model], 4)}
        if ref_b1:
            row["speedup_b1_vs_timm_eager_fp32"] = round(ref_b1 / b1[c.key], 2)
            row["speedup_b32_vs_timm_eager_fp32"] = round(ref_bn / bn[c.key], 2)
        out.append(row)
    return out


def ratios(cells: list[dict]) -> dict[str, float]:
    """AdaViT against the full-token model in the same runtime and precision, and ORT against eager AdaViT."""
    at = {(c["runtime"], c["precision"], c["model"]): c for c in cells}
    out = {}
    for r in RUNTIMES:
        for p in PRECISIONS:
            if (r, p, "full") in at and (r, p, "adavit") in at:
                full, ada = at[(r, p, "full")], at[(r, p, "adavit")]
                out[f"{r}_{p}_b1_full_over_adavit"] = round(full["latency_ms_b1"] / ada["latency_ms_b1"], 2)
                out[f"{r}_{p}_b32_full_over_adavit"] = round(full["latency_ms_b32"] / ada["latency_ms_b32"], 2)
    for p in PRECISIONS:
        eager, ort = at.get(("torch", p, "adavit")), at.get(("onnxruntime", p, "adavit"))
        if eager and ort:
            out[f"adavit_{p}_b1_eager_over_onnxruntime"] = round(eager["latency_ms_b1"] / ort["latency_ms_b1"], 2)
    return out


def table(cells: list[dict]) -> str:
    rows = [("runtime", "precision", "model", "b1 ms", "b32 ms", "GFLOPs", "b1 vs timm eager fp32")]
    for c in cells:
        rows.append((c["runtime"], c["precision"], c["model"], f"{c['latency_ms_b1']:.1f}",
                     f"{c['latency_ms_b32']:.0f}", f"{c['gflops']:.2f}",
                     f"{c.get('speedup_b1_vs_timm_eager_fp32', float('nan')):.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)
