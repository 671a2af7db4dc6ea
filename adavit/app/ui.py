"""AdaViT explorer: upload a photo, drag the sliders, watch tokens, accuracy and latency move.

    python app.py [--port 7860] [--host 127.0.0.1] [--checkpoint PATH] [--data-root DIR] [--share]
    adavit app [same flags]

Serves on http://localhost:7860 on the CPU, offline, with the shipped checkpoint (or, before it
exists, the pretrained backbone / random weights, as the page says). The logic lives in
the modules beside this one (explorer, analysis, overlay, live_accuracy, pareto, readouts); this file is
layout and wiring.
API: POST /analyze (gradio_client: `client.predict(handle_file(img), 0.5, 0.5, 0.5, "top-k", api_name="/analyze")`).
"""
from __future__ import annotations

import argparse
import base64
import logging
import os
import threading
from pathlib import Path

import gradio as gr
import torch

from ..core.config import PATCH
from ..data import default_data_root
from . import overlay, readouts
from .analysis import MODE_CHOICES, make_settings, resolutions
from .compare import BUDGETS, Comparer, budget_label, compare
from .explorer import Explorer
from .gpu import on_gpu
from .models import TIMM_SUGGESTIONS, AppModel, load_default

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "assets" / "examples"
EXAMPLE_FILES = ("flower.jpg", "china.jpg", "coffee.jpg", "chelsea.jpg", "astronaut.jpg")
DEFAULTS = {"fine_ratio": 0.5, "keep1": 0.5, "keep2": 0.5, "mode": "top-k", "resolution": 224}
LAYERS = ["grid", "heatmap", "dropped"]
QUEUE_SIZE = 40  # pending events beyond this are refused with "queue full": bounded memory on CPU basic
CONCURRENCY = 2  # per event; the model itself runs one forward at a time (Analyzer's lock)
MAX_FILE = "25mb"  # = adavit.data.upload.MAX_BYTES
CSS = ".adavit-stats td{padding:2px 8px} .adavit-views img{image-rendering:auto}"
EMPTY = "Upload a photo, paste one, use the webcam, or pick an example."


def _upload(value):
    """The uploaded file's path from an unprocessed Image payload (or a path, for examples).

    Events that take the image run with `preprocess=False`: gr.Image's own preprocessing opens the
    file with PIL and would fail on a corrupt file or a decompression bomb before our code runs.
    Gradio still moves the upload into its cache and checks the path before we see it.
    """
    if value is None or isinstance(value, (str, Path)):
        return value
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        url = value.get("url") or ""
        if url.startswith("data:"):  # streamed/base64 input
            return base64.b64decode(url.split(",", 1)[1])
    raise ValueError("no usable image in this request: upload a file, or pass gradio_client.handle_file(path)")


def _dataset_examples(root: Path | None, n: int = 3) -> list[str]:
    """A few Flowers-102 val images as extra examples, read from the data root (never copied into the repo)."""
    if root is None:
        return []
    try:
        from ..data import flowers, stratified_subset

        ds = flowers(root, "val")
        picks = stratified_subset(ds._labels, 1)[:: max(1, 102 // n)][:n]
        return [str(ds._image_files[i]) for i in picks]
    except Exception:  # examples are a nicety: no data, no extra examples
        return []


def build_app(app_model: AppModel | None = None, data_root: Path | None | str = "auto", *,
              cache_examples: bool = True, live_per_class: int = 1) -> gr.Blocks:
    """The Blocks app. Tests pass a small `app_model`, `data_root=None` and `cache_examples=False`."""
    root = default_data_root() if data_root == "auto" else (Path(data_root) if data_root else None)
    app_model = app_model or load_default(data_root=root)
    ex = Explorer(app_model, root, live_per_class=live_per_class)
    patch = int(getattr(app_model.model, "patch", PATCH))  # the served checkpoint's: sides are whole regions of it
    sides = resolutions(patch)
    card_defaults = {k: v for k, v in app_model.default_settings.items() if k in DEFAULTS}
    d = {**DEFAULTS, **card_defaults}
    if "mode" in card_defaults or "fuse" in app_model.default_settings:
        d["mode"] = ("top-k" if app_model.default_settings.get("mode", "topk") == "topk" else "sample") + (
            " + fuse" if app_model.default_settings.get("fuse") else "")

    def settings_of(fine, k1, k2, mode, res):
        try:
            values = float(fine), float(k1), float(k2), int(float(res))
        except (TypeError, ValueError):
            raise ValueError(f"fine_ratio, keep1, keep2 and resolution must be numbers, got "
                             f"{fine!r}, {k1!r}, {k2!r}, {res!r}") from None
        return make_settings(*values[:3], mode, values[3], patch)

    @on_gpu  # ZeroGPU: a GPU for each call when the `spaces` package exists; the identity elsewhere
    def analyze_ui(image, fine, k1, k2, mode, res, layers, model_name):
        """Release/upload/toggle: overlays + numbers. Bad input -> warning + message, never a crash."""
        try:
            image = _upload(image)
            if image is None:
                return [None, None, None, None, "", "", EMPTY, None]
            out = ex.run(model_name, image, settings_of(fine, k1, k2, mode, res), overlay.Layers.from_names(layers))
        except ValueError as e:  # ImageError and bad settings: the message is written for the user
            gr.Warning(str(e))
            return [None, None, None, None, "", "", f"❌ **Cannot analyse this input**: {e}", None]
        except Exception as e:  # a bug or out of memory: say so, keep serving, keep the trace in the log
            logging.exception("analysis failed")
            gr.Warning(f"unexpected error: {type(e).__name__}: {e}")
            return [None, None, None, None, "", "", f"❌ **Unexpected error** ({type(e).__name__}: {e}); "
                    "the server keeps running, try another image or setting", None]
        r = out.result
        trained = ex.runner(model_name).app_model.trained
        status = readouts.notes_md(r)
        return [*out.views, readouts.top5(r), readouts.hint(r, trained),
                readouts.stats_html(r, out.server_ms, out.render_ms),
                f"ℹ️ {status}" if status else "", r.to_json()]

    @on_gpu
    def accuracy_ui(image, fine, k1, k2, mode, res, model_name):
        """After each analysis: accuracy at this setting (live or from the sweep) and the Pareto chart."""
        try:
            s = settings_of(fine, k1, k2, mode, res)
            acc = ex.accuracy(model_name, s)
            result = None
            try:
                image = _upload(image)
                result = ex.analyze(model_name, image, s) if image is not None else None  # cached: no model run
            except ValueError:
                result = None
            return f"**Accuracy at this setting**: {acc.text}", ex.chart(model_name, s, result, acc)
        except ValueError as e:
            return f"**Accuracy**: not available ({e})", None

    @on_gpu
    def api_analyze(image, fine_ratio, keep1, keep2, mode, resolution=d["resolution"]):
        """(image, fine_ratio, keep1, keep2, mode[, resolution]) -> JSON with top5, tokens_per_stage,
        gflops, gflops_full, latency_ms, latency_ms_full (default model, no overlays). Without a
        resolution, the slider's opening value: the served checkpoint's default side."""
        try:
            image = _upload(image)
            if image is None:
                raise gr.Error("no image: pass one with gradio_client.handle_file(path)")
            return ex.analyze(None, image, settings_of(fine_ratio, keep1, keep2, mode, resolution)).to_json()
        except ValueError as e:
            raise gr.Error(str(e)) from e

    comparer = Comparer(app_model.model, app_model.class_names, app_model.card)

    def compare_ui(image, budget):
        """Compare tab: the photo under every strategy at one budget; bad input -> warning + message."""
        try:
            image = _upload(image)
            if image is None:
                return [], EMPTY, None
            return compare(comparer, image, budget)
        except ValueError as e:
            gr.Warning(str(e))
            return [], f"❌ **Cannot compare**: {e}", None

    def load_timm_ui(name, current):
        try:
            loaded = ex.add_timm(name)
        except ValueError as e:
            gr.Warning(str(e))
            return gr.update(choices=ex.names, value=current), f"❌ {e}"
        return gr.update(choices=ex.names, value=loaded), f"✅ loaded {loaded}: {ex.runner(loaded).app_model.weights}"

    def model_line(name):
        m = ex.runner(name).app_model
        return f"**Model**: {m.name}. **Weights**: {m.weights}."

    with gr.Blocks(title="AdaViT explorer", delete_cache=(600, 3600), analytics_enabled=False) as demo:
        gr.Markdown("# AdaViT explorer: adaptive tokens, live\n"
                    "Mixed-scale patching, then ATS1 and ATS2 drop the least significant tokens between the "
                    "three stages of a ViT-S/14. Drag a slider and release it: the model reruns only what the "
                    "slider changes.")
        weights_md = gr.Markdown(model_line(None), elem_id="weights")
        with gr.Row():
            with gr.Column(scale=5):
                image = gr.Image(label="Photo (upload, paste or webcam)", type="filepath", height=340,
                                 sources=["upload", "clipboard", "webcam"], elem_id="input-image",
                                 value=str(EXAMPLES / EXAMPLE_FILES[0]))
            with gr.Column(scale=4):
                fine = gr.Slider(0.0, 1.0, d["fine_ratio"], step=0.05, elem_id="fine",
                                 label=f"fine-patch ratio (share of {2 * patch} px regions split into 4 fine tokens)")
                keep1 = gr.Slider(0.05, 1.0, d["keep1"], step=0.05, label="ATS1 keep ratio (after stage 1)",
                                  elem_id="keep1")
                keep2 = gr.Slider(0.05, 1.0, d["keep2"], step=0.05, label="ATS2 keep ratio (after stage 2)",
                                  elem_id="keep2")
                mode = gr.Radio(list(MODE_CHOICES), value=d["mode"], label="token selection", elem_id="mode")
                res = gr.Slider(sides[0], sides[-1], d["resolution"], step=2 * patch,
                                label="input resolution (px)", elem_id="res")
                layers = gr.CheckboxGroup(LAYERS, value=LAYERS, label="layers", elem_id="layers")
                model_name = gr.Dropdown(ex.names, value=ex.default, label="model", elem_id="model")
        status = gr.Markdown("", elem_id="status")
        with gr.Row(elem_classes="adavit-views"):
            v0, v1, v2 = (gr.Image(label=overlay.TITLES[s], interactive=False, elem_id=f"view-{s}",
                                   buttons=["download", "fullscreen"]) for s in ("patching", "ats1", "ats2"))
        gr.HTML(overlay.legend_html(patch))
        with gr.Row():
            with gr.Column(scale=4):
                top5 = gr.Label(num_top_classes=5, label="top-5", elem_id="top5")
                hint = gr.Markdown("", elem_id="hint")
            with gr.Column(scale=5):
                stats = gr.HTML("", elem_id="stats")
        accuracy = gr.Markdown("", elem_id="accuracy")
        chart = gr.Plot(label="Pareto: top-1 vs GFLOPs and vs latency (red star: the current setting)",
                        elem_id="pareto")
        with gr.Accordion("Other timm ViTs (plug-in API, pretrained weights from the Hugging Face hub)", open=False):
            timm_name = gr.Textbox(value=TIMM_SUGGESTIONS[0], label="timm model name",
                                   info="e.g. " + ", ".join(TIMM_SUGGESTIONS))
            timm_btn = gr.Button("Load")
            timm_msg = gr.Markdown("")
        with gr.Accordion("JSON of this result (the /analyze API returns the same)", open=False):
            as_json = gr.JSON(label="result")
        api_btn = gr.Button(visible=False)
        with gr.Tab("Compare strategies at one budget", elem_id="compare-tab"):
            with gr.Row():
                cmp_budget = gr.Radio([budget_label(b) for b in BUDGETS], value=budget_label(BUDGETS[1]),
                                      label="compute budget (share of the full-token GFLOPs at 224 px)")
                cmp_btn = gr.Button("Compare AdaViT, resolution, random, EViT, ATS and ToMe on this photo")
            cmp_gallery = gr.Gallery(label="where each strategy spends its tokens", columns=3, elem_id="compare")
            cmp_md = gr.Markdown("", elem_id="compare-table")
            cmp_json = gr.JSON(visible=False)

        sliders = [fine, keep1, keep2, mode, res]
        ui_in = [image, *sliders, layers, model_name]
        ui_out = [v0, v1, v2, top5, hint, stats, status, as_json]
        acc_in = [image, *sliders, model_name]
        # preprocess=False: the raw upload reaches adavit.data.upload (see _upload); values are validated by Settings
        fast = dict(fn=analyze_ui, inputs=ui_in, outputs=ui_out, trigger_mode="always_last",
                    api_visibility="private", show_progress="minimal", preprocess=False)
        slow = dict(fn=accuracy_ui, inputs=acc_in, outputs=[accuracy, chart], api_visibility="private",
                    show_progress="minimal", trigger_mode="always_last", preprocess=False)
        image.change(**fast).then(**slow)
        for s in (fine, keep1, keep2, res):  # heavy work on release only, not on every drag step
            s.release(**fast).then(**slow)
        mode.input(**fast).then(**slow)
        layers.input(fn=analyze_ui, inputs=ui_in, outputs=ui_out, trigger_mode="always_last",
                     api_visibility="private", show_progress="hidden", preprocess=False)  # cached: redraw only
        model_name.input(model_line, model_name, weights_md, api_visibility="private").then(**fast).then(**slow)
        timm_btn.click(load_timm_ui, [timm_name, model_name], [model_name, timm_msg], api_visibility="private") \
            .then(model_line, model_name, weights_md, api_visibility="private").then(**fast).then(**slow)
        demo.load(**fast).then(**slow)
        api_btn.click(api_analyze, [image, fine, keep1, keep2, mode, res], as_json, api_name="analyze",
                      api_visibility="public", preprocess=False)
        cmp_btn.click(compare_ui, [image, cmp_budget], [cmp_gallery, cmp_md, cmp_json], api_name="compare",
                      api_visibility="public", preprocess=False)

        examples = [[str(EXAMPLES / f), d["fine_ratio"], d["keep1"], d["keep2"], d["mode"], d["resolution"]]
                    for f in EXAMPLE_FILES if (EXAMPLES / f).exists()]
        examples += [[p, d["fine_ratio"], d["keep1"], d["keep2"], d["mode"], d["resolution"]]
                     for p in _dataset_examples(root)]
        gr.Examples(examples, [image, *sliders], ui_out,
                    fn=lambda *a: analyze_ui(*a, LAYERS, None), cache_examples=cache_examples,
                    cache_mode="lazy", label="Examples (photos: assets/PROVENANCE.md; Flowers-102 val images "
                    "are added at run time when a data root exists)", examples_per_page=8, visible_columns=[0])
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    demo.adavit_explorer = ex  # for tests and the benchmark (adavit.app.bench times these very handlers)
    demo.adavit_handlers = {"analyze": analyze_ui, "accuracy": accuracy_ui, "api": api_analyze}
    return demo


def warm_up(demo: gr.Blocks) -> None:
    """First request fast: full-token latency at 224 and the live-accuracy cache, in the background."""
    ex: Explorer = demo.adavit_explorer

    def work():
        try:
            s = make_settings(**{k: DEFAULTS[k] for k in ("fine_ratio", "keep1", "keep2", "mode")})
            ex.analyze(None, str(EXAMPLES / EXAMPLE_FILES[0]), s)
            ex.accuracy(None, s)
        except Exception as e:  # warm-up is best effort; the first request will simply be slower
            print(f"warm-up skipped: {e}")

    threading.Thread(target=work, daemon=True, name="adavit-warmup").start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="adavit app", description=__doc__.split("\n")[0])
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--checkpoint", default=None,
                   help="weights (default: checkpoints/adavit_s14_flowers102.safetensors)")
    p.add_argument("--data-root", default="auto", help="folder holding flowers-102/ for live accuracy ('' = none)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("ADAVIT_THREADS", 0)),
                   help="torch CPU threads (0 = torch's default)")
    p.add_argument("--share", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = default_data_root() if args.data_root == "auto" else (Path(args.data_root) if args.data_root else None)
    demo = build_app(load_default(args.checkpoint, root), root)
    warm_up(demo)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE,
                show_error=True, css=CSS)
    return 0
