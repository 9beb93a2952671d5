"""Scale-out and crash safety: DDP equals one process, FSDP/DeepSpeed refused early, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from condlora import AdapterConfig, apply_adapter, save_adapter
from ddp_steps import three_steps
from glue_fixtures import make_tiny_model_dir, write_glue

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
DDP_METHODS = ["condlora", "condlora-frozen-a", "lora", "lora-frozen-a", "lora-frozen-b:grouped",
               "condlora-frozen-b", "condlora-general:grouped"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT without dropout (masks would differ per process) and a small RTE folder."""
    root = tmp_path_factory.mktemp("scale")
    model = make_tiny_model_dir(root / "model")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    return {"model": str(model), "glue": str(write_glue(root / "glue", n_train=40, n_dev=8, folders=["RTE"]))}


def test_two_ddp_processes_equal_one_after_three_steps(tiny, tmp_path):
    """torchrun, 2 CPU processes (gloo), batch 8 split 4 + 4: the same parameters as 1 process with batch 8."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "ddp_steps.py"), tiny["model"], tiny["glue"], str(tmp_path), *DDP_METHODS]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in DDP_METHODS:
            one = three_steps(tiny["model"], tiny["glue"], tmp_path / "one", method)
            file = tmp_path / f"{method}.safetensors"
            with safe_open(str(file), framework="pt") as f:
                assert f.metadata()["world"] == "2"
            two = load_file(str(file))
            assert two.keys() == one.keys() and len(one) >= 4, method
            for name, value in one.items():
                torch.testing.assert_close(two[name], value, atol=1e-6, rtol=1e-5, msg=f"{method} {name}")
            moved = [n for n in one if "theta" in n or "lora_" in n]
            assert moved and all(one[n].abs().sum() > 0 for n in moved), method  # a zero-started side never moved
    finally:
        torch.set_num_threads(threads)


def test_torch_fsdp2_with_generators_in_the_root_unit_equals_one_process(tmp_path):
    """The adapted model itself works under FSDP2 (fully_shard per layer + root) on CPU/gloo."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "fsdp_steps.py")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["train_a"] for r in results] == [True, False]
    for r in results:
        assert r["same_names"] and r["n"] == (6 if r["train_a"] else 4), r  # Θ_A, Θ_B per type + head
        assert r["moved"] > 1e-3 and r["max_diff"] < 1e-6, r


@pytest.mark.parametrize(("env", "name"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_fsdp_and_deepspeed_are_refused_before_anything_is_written(tiny, tmp_path, monkeypatch, capsys, env, name):
    from condlora.cli import main as cli_main

    monkeypatch.setenv(env, "true")  # what `accelerate launch --use_fsdp / --use_deepspeed` sets
    out = tmp_path / "run"
    code = cli_main(["train", "--task", "rte", "--model", tiny["model"], "--glue-dir", tiny["glue"],
                     "--output-dir", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"does not support {name}" in err[0] and "torchrun --nproc_per_node N" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_accelerator_is_refused(kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from condlora.errors import ConfigError
    from condlora.runner.distributed import check_distributed

    check_distributed(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))  # DDP is fine
    check_distributed(SimpleNamespace(distributed_type=DistributedType.NO))
    with pytest.raises(ConfigError, match="use DDP"):
        check_distributed(SimpleNamespace(distributed_type=DistributedType[kind]))


def _half_then(fail):
    """A writer for `atomic_write` that writes half a file to the temporary name, then `fail()`s."""
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"x" * 1000)
        fail()

    return write


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from condlora.fileio import atomic_write, write_json

    target = tmp_path / "results.json"
    write_json(target, {"old": 1})
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, _half_then(lambda: (_ for _ in ()).throw(OSError("disk full"))))
    assert json.loads(target.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    with pytest.raises(OSError):
        atomic_write(tmp_path / "new.json", _half_then(lambda: (_ for _ in ()).throw(OSError("disk full"))))
    assert not (tmp_path / "new.json").exists()


def test_atomic_files_get_the_mode_a_plain_open_would_give(tmp_path):
    import os

    from condlora.fileio import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_failed_adapter_and_checkpoint_saves_keep_the_old_ones(tmp_path, monkeypatch):
    import condlora.serialization
    from condlora.fileio import replace_dir
    from conftest import tiny_bert

    model = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=4))
    save_adapter(model, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
    with torch.no_grad():
        next(iter(model.condlora_generators.parameters())).add_(1.0)

    def broken(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError("killed")

    monkeypatch.setattr(condlora.serialization, "save_file", broken)
    with pytest.raises(OSError, match="killed"):
        save_adapter(model, tmp_path / "adapter")
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()} == before
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.json").write_text("{}")
    with pytest.raises(OSError, match="killed"):
        replace_dir(tmp_path / "ckpt", lambda tmp: broken({}, tmp / "trainable.safetensors"))
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["state.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ckpt"]  # no temporary folder left


KILL_WRITER = """
import os, signal, sys
from pathlib import Path
from condlora.fileio import atomic_write
def write(tmp):
    Path(tmp).write_bytes(b'{"half": ')
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


def test_sigkill_during_a_write_never_leaves_a_half_file_under_the_final_name(tmp_path):
    from condlora.fileio import write_json

    target = tmp_path / "results.json"
    write_json(target, {"old": 1})
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for path in (target, tmp_path / "fresh.json"):
        run = subprocess.run([sys.executable, "-c", KILL_WRITER, str(path)], env=env, timeout=60)
        assert run.returncode == -9
    assert json.loads(target.read_text()) == {"old": 1} and not (tmp_path / "fresh.json").exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "results.json")
    assert leftovers and all(n.startswith((".results.json.", ".fresh.json.")) and n.endswith(".tmp") for n in leftovers)
