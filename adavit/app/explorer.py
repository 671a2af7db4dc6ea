"""The app's state and actions without any UI: models by name, their analyzers, accuracy, chart.

`app.py` only lays out components and maps these return values onto them. Every model the app
can show lives here under a display name; each browser session picks one by name, so loading an
extra timm model never swaps the model under somebody else's feet.
"""
from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from ..core.config import Settings
from ..data import FLOWERS_SPEC, FOLDER_SPEC, card_data
from . import overlay, pareto
from .analysis import Analysis, Analyzer
from .live_accuracy import Accuracy, LiveAccuracy, SweepLookup
from .models import AppModel, load_timm, parameter_free_twins

MAX_EXTRA_MODELS = 2  # extra timm models kept in memory besides the default one


@dataclass
class Runner:
    app_model: AppModel
    analyzer: Analyzer
    live: LiveAccuracy | None  # a subset of the checkpoint's own val data, when that data is here
    sweep: SweepLookup

    def accuracy(self, settings: Settings) -> Accuracy:
        if self.live is not None:
            return self.live(settings)
        if self.sweep:
            return self.sweep(settings)
        if not self.app_model.card:
            return Accuracy(None, "none", "no accuracy: this model has no checkpoint card naming its val data")
        name = (self.app_model.card.get("dataset") or {}).get("name", "Flowers-102")
        return Accuracy(None, "none",
                        f"no accuracy: no {name} val data on this server and no sweep in the checkpoint card")


@dataclass(frozen=True)
class Outcome:
    result: Analysis
    views: list[str]  # JPEG paths: patching, after ATS1, after ATS2
    server_ms: float  # request in -> views written
    render_ms: float  # drawing + encoding of the three views


class Explorer:
    def __init__(self, app_model: AppModel, data_root: Path | None = None, *, live_per_class: int = 1,
                 view_dir: str | Path | None = None):
        self.data_root = data_root
        self.live_per_class = live_per_class
        self.default = app_model.name
        self._runners: dict[str, Runner] = {}
        self._lock = threading.Lock()
        twins = parameter_free_twins(app_model)
        self.pinned = {app_model.name, *(t.name for t in twins)}  # never evicted by timm models loaded later
        for m in (app_model, *twins):
            self._add(m)
        folder = Path(view_dir) if view_dir else Path(tempfile.gettempdir()) / "adavit_views"
        self.views = overlay.ViewFiles(folder)

    def _live(self, app_model: AppModel) -> LiveAccuracy | None:
        """Live accuracy on the checkpoint's own val data (its card's dataset) when that data is here."""
        spec, seed = card_data(app_model.card)
        name = (app_model.card.get("dataset") or {}).get("name", "Flowers-102")
        if spec == FLOWERS_SPEC:
            here = self.data_root is not None and app_model.model.config.num_classes == 102
        else:
            here = spec.startswith(FOLDER_SPEC) and Path(spec[len(FOLDER_SPEC):]).is_dir()
        if not here:
            return None
        return LiveAccuracy(app_model.model, self.data_root, self.live_per_class, spec=spec, seed=seed, dataset=name)

    def _add(self, app_model: AppModel) -> Runner:
        runner = Runner(app_model, Analyzer(app_model.model, app_model.class_names, ood=app_model.ood),
                        self._live(app_model), SweepLookup(app_model.sweep))
        with self._lock:
            self._runners[app_model.name] = runner
            extra = [n for n in self._runners if n not in self.pinned]
            for name in extra[:-MAX_EXTRA_MODELS]:
                del self._runners[name]
        return runner

    @property
    def names(self) -> list[str]:
        return list(self._runners)

    def runner(self, name: str | None) -> Runner:
        with self._lock:
            return self._runners.get(name or self.default) or self._runners[self.default]

    def analyze(self, name: str | None, image, settings: Settings) -> Analysis:
        return self.runner(name).analyzer.analyze(image, settings)

    def run(self, name: str | None, image, settings: Settings, layers: overlay.Layers) -> Outcome:
        """Analysis + the three overlays written as JPEG; ValueError (ImageError) for bad input."""
        t0 = time.perf_counter()
        runner = self.runner(name)
        result = runner.analyzer.analyze(image, settings)
        t1 = time.perf_counter()
        paths = [self.views.save(v) for v in runner.analyzer.views(image, result, layers)]
        t2 = time.perf_counter()
        return Outcome(result, paths, 1000 * (t2 - t0), 1000 * (t2 - t1))

    def accuracy(self, name: str | None, settings: Settings) -> Accuracy:
        return self.runner(name).accuracy(settings)

    def chart(self, name: str | None, settings: Settings, result: Analysis | None, acc: Accuracy) -> go.Figure:
        runner = self.runner(name)
        live = runner.live.history if runner.live is not None else []
        gflops = result.gflops if result is not None else acc.gflops_mean
        latency = result.latency_ms if result is not None else acc.latency_ms
        current = None
        if gflops is not None:
            current = {"gflops": gflops, "latency_ms": latency if latency is not None else 0.0,
                       "accuracy": acc, "settings": settings.to_dict()}
        return pareto.figure(runner.sweep.points, live, current, pareto.peer_fronts(runner.app_model.card))

    def add_timm(self, model_name: str) -> str:
        """Load a pretrained timm ViT through the plug-in API; ValueError (kept model) when it cannot."""
        app_model = load_timm(model_name)
        self._add(app_model)
        return app_model.name
