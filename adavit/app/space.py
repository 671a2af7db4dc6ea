"""`adavit space --out DIR`: a folder that is a Hugging Face Space, ready for `hf upload` or a git push.

It holds app.py, the adavit package, the example photos, the checkpoint with its card and OOD
statistics, a README whose YAML header configures the Space, a `.gitattributes` that routes
`*.safetensors` and every other file over 10 MB through LFS (the Hub refuses larger plain files), and a
requirements.txt with our pins that takes PyTorch's CPU wheels (CPU basic; `--gpu` keeps PyPI's
CUDA build for GPU and ZeroGPU hardware). `tests/test_space.py` boots the folder the way a Space does.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..measure.mahalanobis import stats_path
from ..weights import checkpoint

ROOT = checkpoint.REPO
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LFS_LIMIT = 10 * 1024 * 1024  # the Hub rejects plain git files above this
LFS_RULE = "filter=lfs diff=lfs merge=lfs -text"

DEPLOY = """
## Deploy

This folder is the whole Space: `adavit space --out {out}` built it from the AdaViT repository.

**Upload** (`pip install -U huggingface_hub`, then `hf auth login` with a write token):

```
hf repo create USER/adavit-explorer --repo-type space --space-sdk gradio
hf upload USER/adavit-explorer {out} . --repo-type space
```

or with git, from the folder that holds `{out}` (`git lfs install` first: `.gitattributes` sends
`*.safetensors` and every file over 10 MB through LFS, and the Hub refuses larger plain files):

```
git clone https://huggingface.co/spaces/USER/adavit-explorer && cd adavit-explorer
cp -r ../{out}/. . && git add . && git commit -m "AdaViT explorer" && git push
```

**Hardware** (Space settings, or `suggested_hardware` in the header above):
- **CPU basic** (free, 2 vCPU, 16 GB): this bundle as it is. requirements.txt takes PyTorch's CPU
  wheels (`--extra-index-url {index}`), a far smaller image than PyPI's CUDA build. The app is sized
  for it: a bounded queue (40), two events at a time, one forward at a time.
- **CPU upgrade** (8 vCPU, 32 GB): nothing to change.
- **A GPU** (T4, L4, A10G, ...): build with `adavit space --gpu` (PyPI's CUDA torch). The model loads
  on CUDA by itself (`adavit.app.gpu.device`).
- **ZeroGPU**: build with `adavit space --gpu` and pick ZeroGPU. `spaces` is preinstalled there, so the
  handlers that run the model are wrapped in `@spaces.GPU` (`adavit.app.gpu.on_gpu`, a no-op wherever
  `spaces` is not installed). This path is untested: no ZeroGPU hardware was available.

Spaces set `GRADIO_CACHE_EXAMPLES=true`. The app passes `cache_examples=True, cache_mode="lazy"`
itself, and gradio reads that variable only when `cache_examples` is None, so an example is computed
at its first click, not at launch. A Space installs `requirements.txt` (after `pre-requirements.txt` and
Debian `packages.txt`, which this app does not need) and then pins gradio to `sdk_version`, which equals the
pin here. There is no Flowers-102 copy on a Space: the accuracy readout comes from the sweep in the card.
"""


def front_matter(readme: Path) -> str:
    """The YAML header at the top of README.md, `---` lines included."""
    m = re.match(r"---\n.*?\n---\n", readme.read_text(), re.S)
    if not m:
        raise ValueError(f"{readme} does not start with a Spaces YAML header (--- ... ---)")
    return m.group(0)


def requirements(src: Path, gpu: bool) -> str:
    """Our runtime pins; for CPU hardware PyTorch's CPU index comes first (its `2.14.1+cpu` matches `==2.14.1`)."""
    pins = [ln for ln in src.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    head = ["# the pins of the AdaViT repository's requirements.txt"]
    if not gpu:
        head += ["# CPU basic: PyTorch's CPU wheels, a far smaller image than PyPI's CUDA build",
                 f"--extra-index-url {CPU_INDEX}"]
    return "\n".join(head + pins) + "\n"


def gitattributes(out: Path) -> str:
    big = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                 if p.is_file() and p.suffix != ".safetensors" and p.stat().st_size > LFS_LIMIT)
    return "\n".join([f"*.safetensors {LFS_RULE}", *(f"{p} {LFS_RULE}" for p in big)]) + "\n"


def build(out: str | Path, weights: str | Path | None = None, gpu: bool = False) -> Path:
    """Assemble the Space in `out` (created; must be empty or absent). Returns its path."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass a new folder to --out")
    weights = Path(weights) if weights else checkpoint.SHIPPED
    card = checkpoint.card_path(weights)
    if not weights.exists() or not card.exists():
        raise ValueError(f"no checkpoint and card at {weights} / {card.name}; train one with `adavit train --export`")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", out / "app.py")
    shutil.copytree(ROOT / "adavit", out / "adavit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "assets", out / "assets", ignore=shutil.ignore_patterns("__pycache__"))
    # the app looks for checkpoints/adavit_s14_flowers102.safetensors beside the package
    ckpt = out / "checkpoints"
    ckpt.mkdir()
    for src, name in ((weights, checkpoint.SHIPPED.name), (card, checkpoint.card_path(checkpoint.SHIPPED).name)):
        shutil.copy2(src, ckpt / name)
    ood = stats_path(weights)
    if ood.exists():
        shutil.copy2(ood, ckpt / stats_path(checkpoint.SHIPPED).name)
    header = front_matter(ROOT / "README.md")
    if gpu:
        header = header.replace("suggested_hardware: cpu-basic", "suggested_hardware: zero-a10g")
    title = re.search(r"^title: (.*)$", header, re.M)
    (out / "README.md").write_text(
        header + f"\n# {title.group(1) if title else 'AdaViT explorer'}\n\n"
        "An adaptive-token ViT-S/14 on Flowers-102: drag the sliders to see which tokens each stage keeps, "
        "and how accuracy, GFLOPs and latency move. Source, results and tests: the AdaViT repository.\n"
        + DEPLOY.format(out=out.name, index=CPU_INDEX))
    (out / "requirements.txt").write_text(requirements(ROOT / "requirements.txt", gpu))
    (out / ".gitignore").write_text(".gradio/\n__pycache__/\n")
    (out / ".gitattributes").write_text(gitattributes(out))
    return out


def largest_plain_file(out: Path) -> tuple[Path, int]:
    """The biggest file that .gitattributes does not send through LFS (the Hub's limit is 10 MB)."""
    rules = [ln.split()[0] for ln in (out / ".gitattributes").read_text().splitlines() if "filter=lfs" in ln]
    plain = [p for p in out.rglob("*") if p.is_file() and ".git" not in p.relative_to(out).parts[:1]
             and not any(p.relative_to(out).match(r) or p.relative_to(out).as_posix() == r for r in rules)]
    biggest = max(plain, key=lambda p: p.stat().st_size)
    return biggest, biggest.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adavit space", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a new (or empty) folder for the Space")
    p.add_argument("--checkpoint", default=None, help=f"weights to ship (default {checkpoint.SHIPPED})")
    p.add_argument("--gpu", action="store_true", help="PyPI's CUDA torch and ZeroGPU as suggested hardware")
    args = p.parse_args(argv)
    try:
        out = build(args.out, args.checkpoint, args.gpu)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    big, big_size = largest_plain_file(out)
    print(f"wrote the Space to {out} ({size / 2**20:.1f} MB; largest non-LFS file {big.relative_to(out)}, "
          f"{big_size / 2**20:.2f} MB)\nupload: hf upload USER/adavit-explorer {out} . --repo-type space")
    return 0
