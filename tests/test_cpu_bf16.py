"""bf16 autocast on a CPU with native bf16 (`native_bf16_cpu`), refused on other CPUs; fp16 stays GPU-only; the
study passes --precision to its runs."""

from __future__ import annotations

import json

import pytest
import torch

from condlora.cli import build_parser
from condlora.cli.study import settings_from_args
from condlora.errors import ConfigError
from condlora.runner.train import TrainConfig, train
from condlora.runner.train_config import native_bf16_cpu
from glue_fixtures import make_tiny_model_dir, write_glue

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rules apply without CUDA")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    glue = write_glue(root / "glue", folders=["STS-B"])
    return {"model": str(make_tiny_model_dir(root / "model")), "glue": str(glue)}


def config(tiny, out, precision: str) -> TrainConfig:
    return TrainConfig(task="stsb", method="condlora", model=tiny["model"], glue_dir=tiny["glue"], output_dir=str(out),
                       epochs=1, lr=1e-2, batch_size=8, max_length=32, quiet=True, precision=precision)


def test_bf16_trains_on_a_cpu_with_native_bf16(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("condlora.runner.train.native_bf16_cpu", lambda: True)
    res = train(config(tiny, tmp_path / "bf16", "bf16"))
    assert -1 <= res["test_score"] <= 1
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert saved["run"]["precision"] == "bf16" and saved["device"] == "cpu"
    fp32 = train(config(tiny, tmp_path / "fp32", "fp32"))  # autocast really ran: the scores differ (regression)
    assert res["val_score"] != fp32["val_score"]


@pytest.mark.parametrize("precision, message", [
    ("bf16", "precision bf16 (autocast) needs a CUDA GPU or a CPU with native bf16 (avx512_bf16 or AMX); use fp32"),
    ("fp16", "precision fp16 (autocast) needs a CUDA GPU; use fp32 on this CPU"),
])
def test_refused_where_the_cpu_lacks_it(tiny, tmp_path, monkeypatch, precision, message):
    monkeypatch.setattr("condlora.runner.train.native_bf16_cpu", lambda: False)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(config(tiny, tmp_path, precision))


def test_native_bf16_cpu_is_a_bool():
    assert isinstance(native_bf16_cpu(), bool)


def test_study_passes_precision_to_every_run():
    args = build_parser("study").parse_args(["study", "--output-dir", "x", "--tasks", "stsb", "--precision", "bf16"])
    assert settings_from_args(args).run_args["precision"] == "bf16"
    args = build_parser("study").parse_args(["study", "--output-dir", "x", "--tasks", "stsb"])
    assert "precision" not in settings_from_args(args).run_args
