"""scripts/fit_probe.py, the investigation behind docs/results.md: its variants build what they claim."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from condlora.layers import CondLoRALinear
from glue_fixtures import make_tiny_model_dir, write_glue

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fit_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("fit_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("probe") / "model"))


def adapter_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)


@pytest.mark.parametrize("variant, expected", [
    ("lora", 2 * 2 * 2 * 8 * 32), ("lora-r1", 2 * 2 * 2 * 32), ("condlora", 2 * 2 * 8 * 32),
    ("condlora-r4", 2 * 2 * 4 * 32), ("condlora-unshared", 4 * 2 * 8 * 32), ("condlora-orth-unshared", 4 * 2 * 8 * 32),
])
def test_trainable_adapter_parameters(probe, model_dir, variant, expected):
    assert adapter_params(probe.build(variant, model_dir, 2, 0)) == expected


def test_orth_source_is_a_rotation_and_eqnorm_equalizes_spectral_norms(probe, model_dir):
    model = probe.build("condlora-orth-unshared", model_dir, 2, 0)
    layers = [m for m in model.modules() if isinstance(m, CondLoRALinear)]
    assert len({id(m.generator) for m in layers}) == 4  # one generator per layer
    for m in layers:
        a, _ = m.generator.generate(m.w0().detach())
        theta_a = m.generator.theta_A.detach()
        # A = Θ_A·Pᵀ with P orthogonal keeps the rows' Gram matrix; W0 itself would not
        torch.testing.assert_close(a @ a.T, theta_a @ theta_a.T, atol=1e-5, rtol=1e-4)
        plain, _ = probe.generate_ab(theta_a, m.generator.theta_B, m.w0().detach(), m.generator.form)
        assert not torch.allclose(plain @ plain.T, theta_a @ theta_a.T, atol=1e-3)
    weights = [torch.randn(16, 16) * s for s in (1.0, 3.0)]
    norms = [torch.linalg.matrix_norm(w, ord=2).item() for w in probe.source_transform("eqnorm", weights).values()]
    assert norms == pytest.approx([sum(norms) / 2] * 2, rel=1e-5)


def test_unknown_variant_is_refused(probe, model_dir):
    with pytest.raises(SystemExit, match="unknown variant"):
        probe.build("condlora-sideways", model_dir, 2, 0)


def test_runs_and_summarizes(probe, model_dir, tmp_path, monkeypatch, capsys):
    glue = write_glue(tmp_path / "glue", n_train=40, n_dev=12, folders=["RTE"])
    out = tmp_path / "probe.jsonl"
    argv = ["fit_probe", "--task", "rte", "--model", model_dir, "--glue-dir", str(glue), "--train", "16",
            "--eval", "4", "--epochs", "2", "--max-length", "16", "--variants", "lora@1e-2,condlora-general@1e-2",
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    probe.main()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["variant"], r["epoch"]) for r in records] == [("lora", 1), ("lora", 2), ("condlora-general", 1),
                                                             ("condlora-general", 2)]
    assert all(r["train_loss"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in records)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["fit_probe", "--summary", str(out)])
    probe.main()
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| variant | LR | seeds |") and len(table) == 4
    assert table[2].startswith("| lora | 0.01 | 1 |")
