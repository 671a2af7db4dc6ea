"""The Compare tab through gradio_client (a tiny random AdaViT served in-process), and its settings logic."""
from __future__ import annotations

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402

from adavit.app import ui as app  # noqa: E402
from adavit.app.compare import FALLBACK, fit_depth, parse_budget, strategies_at  # noqa: E402
from adavit.core.strategies import STRATEGIES, make  # noqa: E402
from adavit.data import load_image, prepare  # noqa: E402
from adavit.measure.compare import describe, from_description, shortlist  # noqa: E402
from adavit.measure.flops import outcome_gflops  # noqa: E402
from tests import test_app_api  # noqa: E402

FLOWER = str(app.EXAMPLES / "flower.jpg")
served, client = test_app_api.served, test_app_api.client  # the tiny app, launched as /analyze's tests launch it


def test_compare_tab_renders_every_strategy(client, served):
    _, app_model = served
    gallery, table, result = client.predict(handle_file(FLOWER), "20% of full GFLOPs", api_name="/compare")
    names = [p["strategy"] for p in result["panels"]]
    assert names == list(FALLBACK[0.2]) and set(names) == set(STRATEGIES)
    assert len(gallery) == len(names) and all(item["image"] for item in gallery)
    assert all(n in table for n in names) and "built-in settings" in result["settings_from"]
    # the numbers are what the strategies compute on this photo
    x = prepare(load_image(FLOWER).image, 224).tensor
    model = app_model.model
    for panel in result["panels"]:
        strategy = fit_depth(FALLBACK[0.2][panel["strategy"]], len(model.vit.blocks))
        with torch.inference_mode():
            out = strategy.forward(model, x)
        assert panel["gflops"] == pytest.approx(float(outcome_gflops(model, out)[0]), abs=1e-4)
        assert panel["tokens_per_stage"] == out.tokens_per_stage[0].tolist()
        assert panel["prediction"] == app_model.class_names[int(out.logits.argmax())]
        assert panel["latency_ms"] > 0


def test_compare_tab_reports_bad_input(client, tmp_path):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"no image here")
    gallery, table, result = client.predict(handle_file(str(bad)), "35% of full GFLOPs", api_name="/compare")
    assert gallery == [] and "Cannot compare" in table and result is None


def test_budgets_parse_and_refuse():
    assert parse_budget("27% of full GFLOPs") == 0.27 and parse_budget(0.5) == 0.5
    with pytest.raises(ValueError, match="budget must be one of"):
        parse_budget("33%")


def test_card_settings_replace_the_fallback():
    chosen = make("evit", split=(2, 4, 6), keep=(0.3, 0.75))
    card = {"compare": {"budgets": [0.2, 0.5], "strategies": {"evit": [{"settings": None},
                                                                       {"settings": describe(chosen)}]}}}
    at_half, where = strategies_at(0.5, card)
    assert at_half["evit"] == chosen and at_half["tome"] == FALLBACK[0.5]["tome"] and "adavit compare" in where
    assert strategies_at(0.2, card)[0]["evit"] == FALLBACK[0.2]["evit"]  # no setting there: the fallback


@pytest.mark.parametrize("strategy", [s for b in FALLBACK.values() for s in b.values()])
def test_settings_round_trip_through_json(strategy):
    assert from_description(strategy.name, describe(strategy)) == strategy


def test_fit_depth_keeps_every_stage():
    s = make("random", split=(1, 3, 8))
    assert fit_depth(s, 12) is s
    assert fit_depth(s, 3).split == (1, 1, 1) and sum(fit_depth(s, 6).split) == 6


def test_shortlist_takes_the_nearest_of_each_family():
    a, b, c, d = (make("tome", r=r) for r in (10, 11, 12, 13))
    costs = [(a, 1, 1.00), (b, 1, 1.02), (c, 2, 1.03), (d, 3, 1.20)]  # d is off budget
    assert shortlist(costs, 1.0, 3) == [a, c]
    assert shortlist(costs, 1.0, 1) == [a]
    assert shortlist([(d, 1, 1.045), (c, 2, 1.2)], 1.0, 3) == [d]  # nothing within 3.5%: within 5% will do


def test_the_best_side_is_chosen_on_the_select_half_only():
    from adavit.measure.compare import best_of

    a, b, c = ({"top1_select": t, "gflops_select": g, "top1": r, "within_tolerance": w}
               for t, g, r, w in ((0.95, 4.2, 0.99, True), (0.95, 4.1, 0.90, True), (0.97, 4.0, 0.91, False)))
    assert best_of([(224, a), (252, b)]) == (252, b)  # a tie on select: fewer GFLOPs, whatever all-val says
    assert best_of([(224, a), (252, c)]) == (224, a)  # off budget loses to any point within it
    assert best_of([(252, c)]) == (252, c)


def test_pareto_draws_the_resolution_baseline_and_the_best_peer():
    from adavit.app.pareto import figure, peer_fronts

    def pts(*top1):
        return [{"budget": b, "settings": {"r": i}, "top1": t, "gflops": 10 * b, "latency_ms_b1": 100 * b}
                for i, (b, t) in enumerate(zip((0.2, 0.5), top1, strict=True))]

    card = {"compare": {"strategies": {"adavit": pts(0.99, 0.99), "resolution": pts(0.9, 0.95),
                                       "tome": pts(0.5, 0.9), "evit": pts(0.8, 0.92), "random": []}}}
    fronts = peer_fronts(card)
    assert fronts["resolution"][0] == "resolution baseline (compare)"
    assert fronts["peer"][0].startswith("best peer: evit")
    assert [p["gflops_mean"] for p in fronts["peer"][1]] == [2.0, 5.0]
    card["sweep_resolution"] = [{"side": 112, "top1": 0.93, "gflops_mean": 2.9, "latency_ms_b1": 20.0}]
    assert peer_fronts(card)["resolution"][0] == "resolution baseline (sweep)"
    names = {t.name for t in figure([], [], None, peer_fronts(card)).data}
    assert names == {"resolution baseline (sweep)", "best peer: evit (compare)"}
    assert peer_fronts({}) == {}


def test_a_strategy_compare_gave_a_larger_decode_runs_on_the_image_at_that_side(served):
    """`compare --sides`: the card's point records its side, and the tab decodes the photo at it."""
    from adavit.app.compare import Comparer, sides_at
    from adavit.core.config import Settings

    _, app_model = served
    model = app_model.model
    evit = make("evit", split=(4, 4, 4), keep=(0.5, 0.5))
    ada = make("adavit", settings=Settings(0.2, 0.5, 0.5, resolution=252))
    card = {"compare": {"budgets": [0.2, 0.5], "strategies": {
        "evit": [{"settings": None}, {"settings": describe(evit), "side": 252}],
        "adavit": [{"settings": None}, {"settings": describe(ada), "side": 252}],
        "tome": [{"settings": None}, {"settings": describe(make("tome", r=8))}]}}}
    assert sides_at(0.5, card) == {"evit": 252, "adavit": 252, "tome": 224}
    assert sides_at(0.2, card) == {} and sides_at(0.27, card) == {}
    panels, _ = Comparer(model, app_model.class_names, card).run(FLOWER, 0.5)
    by = {p.name: p for p in panels}
    grid = 252 // model.patch
    assert by["evit"].tokens[0] == grid * grid + model.num_prefix  # every patch of the 252 px image
    assert by["evit"].settings.endswith("on the image at 252 px")
    assert by["tome"].tokens[0] == (224 // model.patch) ** 2 + model.num_prefix
    x = prepare(load_image(FLOWER).image, 252).tensor
    with torch.inference_mode():
        out = fit_depth(evit, len(model.vit.blocks)).forward(model, x)
    assert by["evit"].gflops == pytest.approx(float(outcome_gflops(model, out)[0]), abs=1e-4)
