"""Adapters saved by an earlier release load with this code and compute what they computed then."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from condlora import get_config, load_adapter

RELEASE = Path(__file__).resolve().parent / "data" / "release-0.1.0"


def release_module():
    """The generator script of the release's folder (its base model and input batch)."""
    spec = importlib.util.spec_from_file_location("release_0_1_0", RELEASE / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["condlora-general", "condlora-paper", "lora-frozen-a"])
def test_release_0_1_0_adapter_gives_its_stored_logits(variant):
    release = release_module()
    expected = torch.tensor(json.loads((RELEASE / variant / "logits.json").read_text(encoding="utf-8")))
    base = release.base_model()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=release.input_ids()).logits, expected, atol=1e-3)
        model = load_adapter(base, RELEASE / variant)
        got = model(input_ids=release.input_ids()).logits
    assert get_config(model).to_dict() | {"library_version": "0.1.0"} == json.loads(
        (RELEASE / variant / "adapter_config.json").read_text(encoding="utf-8"))["condlora"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
