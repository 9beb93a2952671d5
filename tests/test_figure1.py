"""The study's Figure 1 step on a fake study folder: real saved peft LoRA adapters on a tiny config-built BERT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from condlora import AdapterConfig, apply_adapter, save_adapter
from condlora.study.figure1 import exceeds, write_study_figure1
from condlora.study.study import StudySettings, run_study
from test_study import FakeRun, glue_dir

R, WIDTH, LAYERS = 4, 32, 4
TYPES = ("query", "value")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A saved 4-layer, width-32 BERT classifier built from its config."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("bert")
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def lora_adapter(base_dir: Path, path: Path, seed: int, kind: str, finished: bool = True) -> Path:
    """A LoRA adapter saved by real peft (as the runner saves `lora`): A, B planted, random, or B zero.

    planted: A_l = C·W0_lᵀ and B_l = W0_l·D with one C, D for every layer (a CondLoRA adapter saved as LoRA), so
    W0_l⁻¹·A_lᵀ = Cᵀ and W0_l⁻¹·B_l = D in every layer.
    """
    from transformers import BertForSequenceClassification

    model = get_peft_model(BertForSequenceClassification.from_pretrained(base_dir),
                           LoraConfig(r=R, lora_alpha=2 * R, target_modules=list(TYPES)))
    gen = torch.Generator().manual_seed(100 + seed)
    c, d = torch.randn(R, WIDTH, generator=gen), torch.randn(WIDTH, R, generator=gen)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
            w0, a, b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if kind == "planted":
                a.copy_(c @ w0.T)
                b.copy_(w0 @ d)
            else:
                a.copy_(torch.randn(a.shape, generator=gen))
                b.copy_(torch.randn(b.shape, generator=gen) if kind == "random" else torch.zeros_like(b))
    model.save_pretrained(path)
    if finished:
        (path.parent / "results.json").write_text("{}")  # the run's end: figure 1 reads only finished runs
    return path


def adapter_path(study: Path, task: str, seed: int, method: str = "lora") -> Path:
    return study / "runs" / task / method / f"seed{seed}" / "best_adapter"


def read_rows(study: Path) -> list[dict]:
    with open(study / "figure1.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(base_dir, tmp_path_factory) -> tuple[Path, str, list]:
    """rte: planted seeds 0-2; mrpc: random seeds 0-2 (seed 3 still training); cola: B zero (unreadable); seed 3
    missing everywhere else."""
    out = tmp_path_factory.mktemp("study")
    for seed in range(3):
        lora_adapter(base_dir, adapter_path(out, "rte", seed), seed, "planted")
        lora_adapter(base_dir, adapter_path(out, "mrpc", seed), seed, "random")
    lora_adapter(base_dir, adapter_path(out, "cola", 0), 0, "zero_b")
    lora_adapter(base_dir, adapter_path(out, "mrpc", 3), 3, "planted", finished=False)  # still training: skipped
    with pytest.warns(UserWarning) as caught:
        md = write_study_figure1(out, ["rte", "mrpc", "cola"], [0, 1, 2, 3], str(base_dir))
    return out, md, [str(w.message) for w in caught]


def test_files_and_rows(study):
    out, md, _ = study
    rows = read_rows(out)
    assert list(rows[0]) == ["task", "module_type", "matrix", "seeds", "lora", "lora_sd", "control_real_w0",
                             "control_real_w0_sd", "control_gaussian", "margin", "margin_sd", "exceeds"]
    assert [(r["task"], r["module_type"], r["matrix"], r["seeds"]) for r in rows] == [
        (t, m, k, "3") for t in ("rte", "mrpc") for m in TYPES for k in "AB"]
    assert all(0.0 <= float(r[c]) <= 1.0 for r in rows for c in ("lora", "control_real_w0", "control_gaussian"))
    assert (out / "figure1.md").read_text(encoding="utf-8") == md
    assert "2 × its standard deviation over seeds" in md and "with one seed" not in md
    assert "| rte | query | W0→A | 3 |" in md
    pngs = {p.name for p in out.glob("figure1_*.png")}
    assert pngs == {f"figure1_{t}_{m}_{k}.png" for t in ("rte", "mrpc") for m in TYPES for k in "AB"}
    assert all((out / p).stat().st_size > 0 for p in pngs)


def test_planted_conversions_are_identical_across_layers_and_exceed(study):
    out, md, _ = study
    rte = [r for r in read_rows(out) if r["task"] == "rte"]
    assert all(float(r["lora"]) > 0.999 and float(r["control_real_w0"]) < 0.9 for r in rte)
    assert {r["exceeds"] for r in rte} == {"yes"}
    assert "- **rte**: cross-layer similarity of the conversion matrices exceeds the random-adapter control." in md


def test_random_adapter_does_not_exceed_the_control(study):
    out, md, _ = study
    mrpc = [r for r in read_rows(out) if r["task"] == "mrpc"]
    assert {r["exceeds"] for r in mrpc} == {"no"}
    assert all(float(r["lora"]) < 0.9 for r in mrpc)
    assert "- **mrpc**: cross-layer similarity of the conversion matrices does not exceed the random-adapter " \
           "control." in md


def test_missing_and_unreadable_adapters_are_skipped_with_a_warning(study):
    out, md, messages = study
    for task, seeds in (("rte", "seed 3"), ("mrpc", "seed 3"), ("cola", "seeds 1, 2, 3")):
        where = f"{out}/runs/{task}/lora/seed<k>/best_adapter"
        assert f"Figure 1 skips {task} {seeds}: no adapter of a finished run at {where}" in messages
    assert any(m.startswith("Figure 1 skips cola seed 0:") for m in messages)
    assert "cola" not in md and not any(r["task"] == "cola" for r in read_rows(out))


def test_exceeds_rule():
    assert exceeds([0.01]) and not exceeds([-0.01])  # one seed: the values only
    assert exceeds([0.30, 0.31, 0.29]) and not exceeds([0.3, -0.2, 0.1])  # mean > 2 sd over seeds
    assert exceeds([float("nan"), 0.3]) is None and exceeds([]) is None


def test_condlora_lora_format_and_one_seed(base_dir, tmp_path):
    """An adapter saved by condlora (method lora) under another method name; one seed: the caption says so."""
    from transformers import BertForSequenceClassification

    model = apply_adapter(BertForSequenceClassification.from_pretrained(base_dir),
                          AdapterConfig(method="lora", r=R, target_modules=list(TYPES)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape))
    save_adapter(model, adapter_path(tmp_path, "rte", 0, "lora-frozen-b"))
    (adapter_path(tmp_path, "rte", 0, "lora-frozen-b").parent / "results.json").write_text("{}")
    md = write_study_figure1(tmp_path, ["rte"], [0], str(base_dir), method="lora-frozen-b")
    assert "with one seed (no spread to compare with) only the values: LoRA > control" in md
    assert "`lora-frozen-b`" in md and [r["seeds"] for r in read_rows(tmp_path)] == ["1"] * 4


def test_run_study_writes_figure1_and_rewrites_it_on_rerun(base_dir, tmp_path):
    fake = FakeRun()

    def run(cfg: dict) -> dict:
        res = fake(cfg)
        path = Path(cfg["output_dir"]) / "best_adapter"
        lora_adapter(base_dir, path, cfg["seed"], "planted", finished=False)  # FakeRun wrote results.json
        return res

    s = StudySettings(tasks="rte", methods="lora", output_dir=str(tmp_path / "s"), seeds=2, lr=1e-3, quiet=True,
                      run_args={"model": str(base_dir), "epochs": 1, "glue_dir": glue_dir(tmp_path)})
    record = run_study(s, run)
    assert "Figure 1 (Kim et al. 2024)" in record["tables"]
    assert [r["seeds"] for r in read_rows(tmp_path / "s")] == ["2"] * 4
    assert json.loads((tmp_path / "s" / "study.json").read_text())["complete"]
    (tmp_path / "s" / "figure1.md").unlink()
    run_study(s, run)  # the same command again: nothing is trained, Figure 1 is written again
    assert len(fake.calls) == 2 and (tmp_path / "s" / "figure1.md").exists()
