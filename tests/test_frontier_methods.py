"""The rows of a tiny adapter budget, all real PEFT: LoRA at r = 1 and 2 (alpha = r), VeRA at r = 256 and 1024,
FourierFT at 1000 frequencies. Counts by formula, the exact set of tensors that move, merging, save / load,
their own learning rates (head too), `condlora train` and `condlora study` with them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from condlora.cli import main as cli_main
from condlora.errors import ConfigError
from condlora.runner.method_defaults import ROWS, method_defaults
from condlora.runner.methods import MethodSetup, setup_method
from condlora.runner.models import head_module_names
from condlora.runner.train import TrainConfig, param_groups, train
from condlora.study.study import StudySettings, run_study
from conftest import logits, tiny_bert, tiny_roberta
from glue_fixtures import make_tiny_model_dir, write_glue

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest.py)
TARGETS = ["query", "value"]
IDS = torch.tensor([[2, 7, 9, 11, 13, 3], [2, 20, 21, 22, 3, 0]])
ROW_NAMES = list(ROWS)
# the trainable tensors of each row's adapter, per adapted layer
OWN = {"lora": ("lora_A", "lora_B"), "vera": ("vera_lambda_b", "vera_lambda_d"), "fourierft": ("fourierft_spectrum",)}


def build(method: str, model=None, n_frequency: int | None = None):
    """`setup_method` with the row's own sizes (FourierFT: `n_frequency` where given) and the dense head."""
    extra = {"n_frequency": n_frequency} if n_frequency else {}
    return setup_method(model or tiny_bert(), MethodSetup.row(method, TARGETS, **extra))


def adapter_count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n)


def minilm_shaped_bert():
    """A BERT with all-MiniLM-L6-v2's shape (6 layers, width 384) and a tiny vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=384, num_hidden_layers=6,
                                                    num_attention_heads=12, intermediate_size=64)).eval()


@pytest.mark.parametrize(("method", "count"), [("lora-r1", 12 * 2 * 384), ("lora-r2", 12 * 2 * 2 * 384),
                                               ("vera", 12 * (256 + 384)), ("vera-r1024", 12 * (1024 + 384)),
                                               ("fourierft", 12 * 1000), ("lora", 12 * 2 * 8 * 384)])
def test_trainable_counts_on_the_minilm_shape(method, count):
    assert adapter_count(build(method, minilm_shaped_bert())) == count
    assert {"vera": 7_680, "vera-r1024": 16_896, "fourierft": 12_000}.get(method, count) == count


@pytest.mark.parametrize("method", ROW_NAMES)
def test_only_the_rows_own_tensors_and_the_head_move(method):
    model = build(method, n_frequency=100)
    kind = method_defaults(method).kind
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n in names if "modules_to_save" not in n}
    assert adapter and all(any(f".{t}." in n for t in OWN[kind]) for n in adapter)
    assert {n.split(".modules_to_save")[0] for n in names - adapter} == {"base_model.model.classifier",
                                                                        "base_model.model.bert.pooler"}
    r = method_defaults(method).r
    per_layer = {"lora": lambda: 2 * 32 * r, "vera": lambda: r + 32, "fourierft": lambda: 100}[kind]()
    assert adapter_count(model) == 4 * per_layer  # 2 layers x query, value
    nonzero(model)  # LoRA's zero B (VeRA's zero lambda_b) would keep the other side still in the first steps
    before = {**{n: p.detach().clone() for n, p in model.named_parameters()},
              **{n: b.detach().clone() for n, b in model.named_buffers()}}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):
        model.train()(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    after = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved == names
    frozen = [n for n in before if "vera_A" in n or "vera_B" in n or n.endswith("base_layer.weight")]
    assert frozen and not moved & set(frozen)


def nonzero(model):
    """Give every trainable tensor a random value: a 'trained' adapter (VeRA's and LoRA's start as identity)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("make", [tiny_bert, tiny_roberta], ids=["bert-pooler", "roberta-head"])
@pytest.mark.parametrize("method", ROW_NAMES)
def test_merge_peft_gives_a_plain_model_with_the_same_logits(method, make):
    """`merge_peft` merges every row, also where PEFT 0.21's merge_and_unload fails (a saved head module
    without .weight: BERT's pooler with the dense head, roberta-base's classification head)."""
    from peft.utils import ModulesToSaveWrapper

    from condlora.runner.peft_methods import merge_peft

    torch.manual_seed(1)
    model = nonzero(build(method, make(), n_frequency=100)).eval()
    unmerged = logits(model, IDS)
    merged = merge_peft(model)
    assert type(merged) is type(make()) and not any(isinstance(m, ModulesToSaveWrapper) for m in merged.modules())
    torch.testing.assert_close(logits(merged, IDS), unmerged, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ROW_NAMES)
def test_merged_logits_equal_unmerged(method):
    torch.manual_seed(1)
    model = nonzero(build(method, n_frequency=100)).eval()
    assert not torch.allclose(logits(model, IDS), logits(tiny_bert(), IDS), atol=1e-4)
    unmerged = logits(model, IDS)
    # in place: PEFT 0.21's merge_and_unload of VeRA / FourierFT fails on a saved BertPooler (no .weight)
    model.merge_adapter()
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.merged
    torch.testing.assert_close(logits(model, IDS), unmerged, atol=1e-4, rtol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, IDS), unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ROW_NAMES)
def test_save_and_load_under_another_seed(tmp_path, method):
    from peft import PeftModel

    torch.manual_seed(1)
    model = nonzero(build(method, n_frequency=100)).eval()
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    if method.startswith("vera"):  # the shared frozen pair is saved, not regenerated from the seed
        assert {"base_model.vera_A", "base_model.vera_B"} <= keys
    torch.manual_seed(99)
    reloaded = PeftModel.from_pretrained(tiny_bert(), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, IDS), logits(model, IDS))


def test_row_names_fix_their_sizes_and_refuse_what_they_lack(tmp_path):
    base = dict(task="rte", glue_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    write_glue(tmp_path, n_train=8, n_dev=4, folders=["RTE"])
    cfg = TrainConfig(method="lora-r1", **base)
    assert (cfg.r, cfg.alpha, cfg.lr, cfg.head_lr, cfg.n_frequency) == (1, 1.0, 5e-4, None, None)
    cfg = TrainConfig(method="vera", **base)
    assert (cfg.r, cfg.alpha, cfg.lr, cfg.head_lr, cfg.effective_head_lr) == (256, None, 1e-2, 4e-3, 4e-3)
    cfg = TrainConfig(method="fourierft", **base)
    assert (cfg.r, cfg.n_frequency, cfg.fourier_scaling, cfg.lr, cfg.head_lr) == (None, 1000, 150.0, 5e-2, 6e-3)
    assert TrainConfig(method="vera", r=64, **base).r == 64
    assert TrainConfig(method="lora", **base).run_dict()["r"] == 8  # old rows: unchanged
    hint = "lora-r1 is lora at r=1, alpha=1; for r=4 use --method lora --r 4 --alpha 4$"
    with pytest.raises(ConfigError, match=hint):
        TrainConfig(method="lora-r1", r=4, **base)
    with pytest.raises(ConfigError, match="vera-r1024 is vera at r=1024; for r=256 use --method vera --r 256"):
        TrainConfig(method="vera-r1024", r=256, **base)
    for method, name in (("vera", "alpha"), ("fourierft", "r"), ("lora", "n_frequency"), ("vera", "fourier_scaling")):
        with pytest.raises(ConfigError, match=f"method {method} has no {name}"):
            TrainConfig(method=method, **{name: 2}, **base)


def test_head_trains_at_its_own_lr():
    model = build("vera", n_frequency=None)
    heads = head_module_names(tiny_bert(), "dense")
    cfg = TrainConfig.__new__(TrainConfig)
    cfg.lr, cfg.head_lr = 1e-2, 4e-3
    adapter, head = param_groups(model, heads, cfg)
    assert head["lr"] == 4e-3 and "lr" not in adapter
    assert sum(p.numel() for p in adapter["params"]) == 4 * (256 + 32)
    cfg.head_lr = None
    assert len(param_groups(model, heads, cfg)) == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontier")
    return {"model": str(make_tiny_model_dir(root / "model")),
            "glue": str(write_glue(root / "glue", n_train=40, n_dev=12, folders=["RTE"]))}


@pytest.mark.parametrize("method", ["vera", "fourierft", "lora-r2"])
def test_condlora_train_runs_saves_and_records_the_row(tiny, tmp_path, capsys, method):
    from peft import PeftModel

    from condlora.runner.glue import Encoded, load_glue
    from condlora.runner.models import load_classifier, load_tokenizer

    args = ["train", "--task", "rte", "--method", method, "--model", tiny["model"], "--glue-dir", tiny["glue"],
            "--output-dir", str(tmp_path), "--epochs", "1", "--batch-size", "8", "--max-length", "32"]
    args += ["--n-frequency", "200"] if method == "fourierft" else []
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    cfg = json.loads((tmp_path / "config.json").read_text())
    run, res = cfg["run"], json.loads((tmp_path / "results.json").read_text())
    d = method_defaults(method)
    per_layer = {"vera": 256 + 32, "fourierft": 200, "lora": 2 * 2 * 32}[d.kind]
    assert cfg["params"]["trainable"] == res["trainable_params"] == 4 * per_layer
    assert f"{4 * per_layer:,} trainable adapter parameters" in out
    assert (run["method"], run["lr"], run["head_lr"], res["head_lr"]) == (method, d.lr, d.head_lr,
                                                                         d.head_lr or d.lr)
    assert (run["r"], run["alpha"], run["n_frequency"]) == (d.r, d.alpha, 200 if d.n_frequency else None)
    assert res["saved"] == ["best_adapter"] and math.isfinite(res["val_score"])
    model = PeftModel.from_pretrained(load_classifier(tiny["model"], num_labels=2), tmp_path / "best_adapter")
    assert adapter_count(model) == 0  # loaded for inference
    batch = Encoded(load_glue("rte", tiny["glue"]).test, load_tokenizer(tiny["model"]), 32).batch(range(12))
    labels = batch.pop("labels")
    with torch.no_grad():
        pred = model.eval()(**batch).logits.argmax(-1)
    assert (pred == labels).float().mean().item() == pytest.approx(res["test_score"])  # the best adapter
    assert cli_main(args) == 0 and "already complete" in capsys.readouterr().out  # the run folder is reused


def test_export_of_a_vera_adapter_is_a_one_line_error(tiny, tmp_path, capsys):
    model = build("vera")
    model.save_pretrained(tmp_path / "vera")
    code = cli_main(["export", "--model", tiny["model"], "--adapter", str(tmp_path / "vera"),
                     "--output-dir", str(tmp_path / "out"), "--num-labels", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "PEFT VERA adapter" in err


def test_old_run_folders_still_match(tiny, tmp_path):
    kw = dict(task="rte", method="lora", model=tiny["model"], glue_dir=tiny["glue"], output_dir=str(tmp_path),
              epochs=1, lr=1e-2, batch_size=8, max_length=32, quiet=True)
    first = train(TrainConfig(**kw))
    saved = json.loads((tmp_path / "config.json").read_text())
    for name in ("head_lr", "n_frequency", "fourier_scaling"):  # written before these settings existed
        del saved["run"][name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert train(TrainConfig(**kw)) == first


def fake_run(best: dict[str, float]):
    """A study runner whose validation score peaks at `best[method]` (log scale); records the LRs it trained."""
    calls = []

    def run(cfg: dict) -> dict:
        from pathlib import Path

        calls.append((cfg["method"], cfg["lr"]))
        score = 1 - abs(math.log(cfg["lr"] / best[cfg["method"]]))
        res = {"task": cfg["task"], "method": cfg["method"], "seed": cfg["seed"], "lr": cfg["lr"], "model": "fake",
               "metric": "accuracy", "val_score": score, "test_score": 0.6 + 0.01 * cfg["seed"],
               "trainable_params": 7680, "head_params": 10, "examples_per_sec": 1.0, "wall_time_s": 1.0}
        out = Path(cfg["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"run": {k: v for k, v in cfg.items() if k != "output_dir"}}))
        (out / "results.json").write_text(json.dumps(res))
        return res

    run.calls = calls
    return run


def test_study_gives_each_row_its_own_grid_and_brackets_the_best_lr(tmp_path):
    write_glue(tmp_path / "glue", n_train=8, n_dev=13, folders=["RTE"])
    run = fake_run({"lora-r1": 1e-3, "vera": 5e-2, "fourierft": 1e-2})
    s = StudySettings(tasks="rte", methods="lora-r1,vera,fourierft", output_dir=str(tmp_path / "s"), seeds=1,
                      lr_grid="auto", quiet=True, run_args={"model": "fake", "glue_dir": str(tmp_path / "glue")})
    assert s.grid("vera") == [4e-3, 1e-2, 2.5e-2] and s.grid("lora-r1") == [1e-3, 2e-3, 5e-3]
    record = run_study(s, run_fn=run)
    lr = record["lr"]["rte"]
    assert lr["lora-r1"]["lr"] == 1e-3 and lr["lora-r1"]["extended"] == [5e-4]
    assert lr["vera"]["lr"] == 6.25e-2 and lr["vera"]["extended"] == [6.25e-2, 0.156]  # past the top edge, twice
    assert lr["fourierft"]["lr"] == 8e-3 and lr["fourierft"]["extended"] == [8e-3, 3.2e-3]
    assert all(lr[m]["bracketed"] for m in lr)
    with pytest.warns(UserWarning, match="rte/lora-r1: the best LR, 0.00025, sits at the edge"):
        run_study(StudySettings(**{**vars(s), "methods": "lora-r1", "lr_grid": "auto", "lr_grids": None,
                                   "output_dir": str(tmp_path / "t")}), run_fn=fake_run({"lora-r1": 1e-5}))
    fixed = StudySettings(tasks="rte", methods="lora-r1,vera", output_dir=str(tmp_path / "f"), lr_grid="1e-3,2e-3",
                          run_args={"model": "fake"})
    assert fixed.grid("vera") == fixed.grid("lora-r1") == [1e-3, 2e-3]  # a list overrides for every row


def test_bench_trains_and_merges_the_rows(tmp_path):
    from condlora.cli import bench as bench_cli
    from condlora.cli import build_parser

    tiny_bert().save_pretrained(tmp_path / "tiny")
    argv = ["bench", "--model", str(tmp_path / "tiny"), "--batch-size", "2", "--max-length", "8", "--steps", "1",
            "--warmup", "0", "--repeats", "1", "--methods", "vera,lora-r2,infer-merged-fourierft", "--threads", "1",
            "--json", str(tmp_path / "b.json"), "--quiet"]
    assert bench_cli.main(build_parser("bench").parse_args(argv)) == 0
    res = json.loads((tmp_path / "b.json").read_text())["results"]
    assert res["vera"]["trainable"] == 32 * 2 + 2 + 4 * (256 + 32)  # linear head + 2 layers x query, value
    assert res["lora-r2"]["trainable"] == 32 * 2 + 2 + 4 * 2 * (32 + 32)  # r 2: A and B of 4 layers
    assert res["infer-merged-fourierft"]["trainable"] == 0 and res["infer-merged-fourierft"]["step_s"] > 0


def test_status_report_plans_each_rows_own_grid(tmp_path):
    from condlora.study.report import study_plan

    out = tmp_path / "s"
    out.mkdir()
    settings = {"tasks": ["mrpc"], "methods": ["lora", "vera"], "lr_grid": None, "lr_search": None,
                "lr_grids": {"lora": [1e-3, 2e-3, 5e-3], "vera": [4e-3, 1e-2]}}
    (out / "study.json").write_text(json.dumps({"settings": settings, "lr": {}}))
    plan = study_plan(out)
    assert plan["searched"] and plan["n_trials"] == {("mrpc", "lora"): 3, ("mrpc", "vera"): 2}
