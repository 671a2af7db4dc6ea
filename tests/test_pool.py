"""`adavit pool`: compare runs on disjoint held-out folds added up into one measurement, with its spread."""
from __future__ import annotations

import json

import pytest
from scipy.stats import binomtest

from adavit.measure.pool import main, pool

PROTOCOL = {"tolerance": 0.05, "candidates_per_budget": 3, "sides": [224], "resolution": 224,
            "attention": "global in every block"}


def run(files, tops, paired, full=0.9, budgets=(0.2, 0.35)):
    """A compare JSON: `tops` maps strategy -> top-1 per budget; `paired` AdaViT's counts per budget."""
    def point(name, i, top):
        p = {"budget": budgets[i], "settings": {"s": name}, "top1": top, "gflops": 2.0 + i, "side": 224}
        if name == "adavit":
            p["paired"] = {n: {"all": {"gained": g, "lost": lo}} for n, (g, lo) in paired[i].items()}
        return p
    return {"on": "holdout", "holdout_files": files, "budgets": list(budgets), "protocol": dict(PROTOCOL),
            "full": {"top1": full, "gflops": 10.0}, "checkpoint": "x.safetensors",
            "strategies": {n: [point(n, i, t) for i, t in enumerate(ts)] for n, ts in tops.items()}}


def folds():
    a = run([f"a{i}" for i in range(10)], {"adavit": [0.8, 0.9], "evit": [0.7, 0.9], "res": [0.9, 0.8]},
            [{"evit": (2, 1), "res": (0, 1)}, {"evit": (1, 1), "res": (2, 1)}])
    b = run([f"b{i}" for i in range(30)], {"adavit": [0.9, 0.8], "evit": [0.8, 0.6], "res": [0.8, 0.9]},
            [{"evit": (4, 1), "res": (3, 3)}, {"evit": (7, 1), "res": (1, 4)}], full=1.0)
    return [a, b]


def test_pooled_top1_weighs_each_fold_by_its_images_and_sums_the_paired_counts(tmp_path):
    out = pool(folds(), [tmp_path / "a.json", tmp_path / "b.json"])
    assert out["images"] == 40 and out["full"]["top1"] == pytest.approx((10 * 0.9 + 30 * 1.0) / 40)
    ada, evit, res = (out["strategies"][n] for n in ("adavit", "evit", "res"))
    assert ada[0]["top1"] == pytest.approx(0.875) and res[0]["top1"] == pytest.approx(0.825)
    assert evit[0]["top1"] == pytest.approx(0.775) and ada[0]["top1_folds"] == [0.8, 0.9]
    assert ada[0]["top1_sd"] == pytest.approx(0.0707107, abs=1e-6)
    m20, m35 = out["margins"]
    # 20%: res is best on the pooled images (0.825 against evit's 0.775), so the counts against res are summed
    assert m20["best_other"] == "res" and m20["margin"] == pytest.approx(0.05)
    assert (m20["paired"]["gained"], m20["paired"]["lost"]) == (3, 4)
    assert m20["paired"]["p_value"] == pytest.approx(binomtest(3, 7, 0.5).pvalue)
    assert m20["margin_folds"] == pytest.approx([-0.1, 0.1])
    assert m20["own_best_margin_folds"] == pytest.approx([-0.1, 0.1])  # each fold's best other: res, then res
    # 35%: res pooled 0.875 beats evit 0.675; fold a's own best other is evit (0.9, a tie with AdaViT)
    assert m35["best_other"] == "res" and m35["margin"] == pytest.approx(0.825 - 0.875)
    assert m35["own_best_margin_folds"] == pytest.approx([0.0, -0.1])
    assert (m35["paired"]["gained"], m35["paired"]["lost"]) == (3, 5)


def test_folds_that_share_images_or_differ_in_protocol_are_refused(tmp_path):
    a, b = folds()
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    b["holdout_files"] = ["b0", "a3"]
    with pytest.raises(ValueError, match="share 1 of their images \\(e.g. a3\\); pool needs disjoint folds"):
        pool([a, b], paths)
    a, b = folds()
    b["protocol"]["sides"] = [224, 252]
    with pytest.raises(ValueError, match="b.json has protocol sides = \\[224, 252\\]"):
        pool([a, b], paths)
    a, b = folds()
    b["budgets"] = [0.2, 0.5]
    with pytest.raises(ValueError, match="budgets"):
        pool([a, b], paths)
    a, b = folds()
    b["on"] = "val"
    with pytest.raises(ValueError, match="ran on val, not on held-out train images"):
        pool([a, b], paths)


def test_cli_writes_json_and_table_and_explains_bad_input(tmp_path, capsys):
    paths = []
    for name, r in zip("ab", folds(), strict=True):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    out = tmp_path / "pool.json"
    assert main([*map(str, paths), "--json", str(out)]) == 0
    table = (tmp_path / "pool.md").read_text()
    assert "| 20% | 87.50% (80.00 / 90.00) @ 2.00 |" in table and "+5.00 vs res (+3 / -4, p = 1.00)" in table
    assert json.loads(out.read_text())["command"].startswith("python -m adavit pool ")
    assert main([str(paths[0]), "--json", str(out)]) == 2
    assert "two or more compare runs" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(paths[0]), str(tmp_path / "bad.json"), "--json", str(out)]) == 2
    assert f"can't read {tmp_path / 'bad.json'} as a compare JSON" in capsys.readouterr().err
