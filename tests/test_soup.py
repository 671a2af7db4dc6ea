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


def test_soup_refuses_other_configs_one_checkpoint_and_overwriting_an_ingredient(tmp_path):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1, scorer="learned")
    with pytest.raises(ValueError, match="differs from .* in scorer"):
        soup.soup([a, b])
    with pytest.raises(ValueError, match="at least two checkpoints"):
        soup.soup([a])
    with pytest.raises(SystemExit, match="is one of the ingredients"):
        soup.main([a, a, "--out", a])
    with pytest.raises(SystemExit, match="no checkpoint at .*missing"):
        soup.main([a, str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "s.safetensors")])
