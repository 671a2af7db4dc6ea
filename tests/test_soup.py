"""adavit soup: the element-wise mean of checkpoints of one config, and the errors around it."""
from __future__ import annotations

import pytest
import torch

from adavit.core.config import AdaViTConfig
from adavit.core.model import AdaViT
from adavit.weights import checkpoint, soup


def _saved(tmp_path, name: str, seed: int, **config) -> str:
    torch.manual_seed(seed)
    path = tmp_path / f"{name}.safetensors"
    checkpoint.save(AdaViT.create(AdaViTConfig(num_classes=10, **config)), path,
                    {"recipe": {"seed": seed}, "default_settings": {"fine_ratio": 0.2},
                     "class_names": [f"flower {i}" for i in range(10)]}, half=False)
    return str(path)


def test_soup_is_the_mean_and_its_card_names_the_ingredients(tmp_path):
    a, b = _saved(tmp_path, "a", 0, scorer="learned"), _saved(tmp_path, "b", 1, scorer="learned")
    out = tmp_path / "soup.safetensors"
    soup.main([a, b, "--out", str(out)])
    got = checkpoint.load_model(out)
    sa, sb = checkpoint.load_model(a).state_dict(), checkpoint.load_model(b).state_dict()
    for k, v in got.state_dict().items():  # saved in fp16: the mean up to its rounding
        torch.testing.assert_close(v, ((sa[k] + sb[k]) / 2).half().float(), rtol=0, atol=0)
    assert not torch.equal(sa["vit.head.weight"], sb["vit.head.weight"])
    assert got.config.scorer == "learned" and got.scorers is not None
    card = checkpoint.read_card(out)
    assert [i["path"] for i in card["recipe"]["soup"]] == [a, b]
    assert [i["recipe"] for i in card["recipe"]["soup"]] == [{"seed": 0}, {"seed": 1}]
    assert len(card["recipe"]["soup"][0]["sha256"]) == 64
    assert card["default_settings"] == {"fine_ratio": 0.2}
    assert card["class_names"] == [f"flower {i}" for i in range(10)]  # what the app and data read offline


def test_a_two_run_soup_weighted_2_to_1_with_a_third_run_is_the_mean_of_all_three(tmp_path):
    a, b, c = (_saved(tmp_path, n, i, scorer="learned") for i, n in enumerate("abc"))
    ab, abc = tmp_path / "ab.safetensors", tmp_path / "abc.safetensors"
    soup.main([a, b, "--out", str(ab)])
    soup.main([str(ab), c, "--weights", "2,1", "--out", str(abc)])
    states = [checkpoint.load_model(p).state_dict() for p in (a, b, c)]
    got = checkpoint.load_model(abc).state_dict()
    for k, v in got.items():  # two fp16 roundings (the two-run soup, then this one) away from the exact mean
        torch.testing.assert_close(v, sum(s[k] for s in states) / 3, rtol=2e-3, atol=1e-4)
    card = checkpoint.read_card(abc)
    assert [i["weight"] for i in card["recipe"]["soup"]] == [2.0, 1.0]
    assert card["recipe"]["soup"][0]["recipe"]["soup"][1]["recipe"] == {"seed": 1}  # the nested soup keeps its runs
    assert card["command"].endswith("--weights 2,1")


def test_soup_refuses_bad_weights(tmp_path):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1)
    with pytest.raises(ValueError, match="3 weights for 2 checkpoints"):
        soup.soup([a, b], [1, 1, 1])
    with pytest.raises(ValueError, match="must be positive"):
        soup.soup([a, b], [1, 0])
    with pytest.raises(SystemExit, match="not a comma-separated list of numbers"):
        soup.main([a, b, "--weights", "2,x", "--out", str(tmp_path / "s.safetensors")])


def test_a_learned_part_only_some_ingredients_have_is_averaged_over_those(tmp_path):
    """WiSE-FT across recipes: a run with every token (no scorer) averaged into an AdaViT with one."""
    plain, learned = _saved(tmp_path, "plain", 0), _saved(tmp_path, "learned", 1, scorer="learned")
    gated = _saved(tmp_path, "gated", 2, scorer="learned", gate="learned")
    out = tmp_path / "soup.safetensors"
    soup.main([plain, learned, gated, "--weights", "1,1,2", "--out", str(out)])
    got = checkpoint.load_model(out)
    assert (got.config.scorer, got.config.gate) == ("learned", "learned")
    sp, sl, sg = (checkpoint.load_model(p).state_dict() for p in (plain, learned, gated))
    assert not any(k.startswith(("scorers.", "gate")) for k in sp)  # it has none of those weights
    for k, v in got.state_dict().items():
        if k in sp:  # every ingredient has it: the weighted mean of all three
            want = (sp[k] + sl[k] + 2 * sg[k]) / 4
        elif k in sl:  # the scorer: the mean over the two that have one, weighted 1 and 2
            want = (sl[k] + 2 * sg[k]) / 3
        else:  # the gate: the one ingredient that has it
            want = sg[k]
        torch.testing.assert_close(v, want, rtol=1e-3, atol=1e-5)  # up to the saved soup's fp16 rounding
    assert any(k.startswith("gate") and k not in sl for k in got.state_dict())  # the last branch was taken
    assert checkpoint.read_card(out)["recipe"]["averaged_over"] == {"gate": [gated], "scorer": [learned, gated]}
    assert checkpoint.read_card(out)["recipe"]["soup"][2]["weight"] == 2.0
    assert checkpoint.read_card(out)["selection"] is None  # no ingredient held images out


def test_a_soup_holds_out_what_no_ingredient_trained_on():
    def card(*files):
        return {"selection": {"holdout_files": list(files), "seed": 0}}

    assert soup.held_out_by_all([card("b/2.jpg", "a/1.jpg"), card("a/1.jpg", "b/2.jpg")]) == {
        "holdout_files": ["b/2.jpg", "a/1.jpg"]}
    assert soup.held_out_by_all([card("a/1.jpg", "b/2.jpg"), card("b/2.jpg", "c/3.jpg")]) == {
        "holdout_files": ["b/2.jpg"]}
    assert soup.held_out_by_all([card("a/1.jpg"), card("b/2.jpg")]) is None
    assert soup.held_out_by_all([card("a/1.jpg"), {"selection": None}]) is None  # one trained on every image


def test_soup_refuses_other_configs_one_checkpoint_and_overwriting_an_ingredient(tmp_path):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1, scorer="learned", windows=(112, 0, 0))
    with pytest.raises(ValueError, match="differs from .* in windows: only checkpoints of one config"):
        soup.soup([a, b])
    with pytest.raises(ValueError, match="at least two checkpoints"):
        soup.soup([a])
    with pytest.raises(SystemExit, match="is one of the ingredients"):
        soup.main([a, a, "--out", a])
    with pytest.raises(SystemExit, match="no checkpoint at .*missing"):
        soup.main([a, str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "s.safetensors")])
