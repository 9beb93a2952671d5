"""`condlora bench`: argument errors, the table on known numbers, one tiny end-to-end run."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from condlora.bench import bench
from condlora.cli import bench as bench_cli
from condlora.cli import main as cli_main
from conftest import tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_arguments_are_one_line_errors(capsys):
    assert cli_main(["bench", "--methods", "base,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert cli_main(["bench", "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
    assert cli_main(["bench", "--methods", "base,base"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    assert cli_main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def row(step: float, mem: float) -> dict:
    return {"step_s": step, "examples_per_s": 16 / step, "step_mb": mem, "trainable": 10}


def test_ratios_table_on_known_numbers():
    results = {"base": row(1.0, 100), "lora": row(1.1, 120), "condlora": row(1.02, 110),
               "infer-base": row(0.5, 10), "infer-merged": row(0.5, 10), "infer-condlora": row(0.55, 12)}
    assert bench.ratio(results, "condlora", "lora", "step_s") == pytest.approx(1.02 / 1.1)
    assert bench.ratio(results, "infer-condlora", "infer-base", "step_s") == pytest.approx(1.1)
    assert bench.ratio(results, "condlora", "missing", "step_s") is None
    lines = bench.table(results).splitlines()
    assert "0.927" in lines[4]  # condlora vs lora (real PEFT)
    assert "1.020" in lines[4]  # condlora vs base
    assert not any("target" in line or "met" in line.split() for line in lines)


def test_floor_column_and_flag():
    results = {"floor": row(0.8, 90), "base": row(1.0, 100), "lora": row(1.1, 120), "condlora": row(1.0, 110),
               "infer-base": row(0.5, 10)}
    head, _, floor, base, lora, condlora, infer = bench.table(results).splitlines()
    assert "x floor" in head and "1.250" in condlora.split() and "1.375" in lora.split()
    assert infer.split()[3:6] == ["-", "1.000", "-"]  # x peft, x base, x floor
    assert "x floor" not in bench.table({"lora": row(1.1, 120)})
    assert bench_cli.check_args(parse("--methods", "lora,condlora", "--floor")) == ["floor", "lora", "condlora"]
    assert bench_cli.check_args(parse("--methods", "lora,floor", "--floor")) == ["lora", "floor"]


def test_floor_computes_gradients_down_to_the_adapted_outputs_only(monkeypatch):
    from condlora.bench import worker as bench_worker

    reached = []
    monkeypatch.setattr(bench_worker._Tap, "backward", staticmethod(lambda ctx, g: reached.append(g) or (None, None)))
    model = bench_worker.apply_method(tiny_bert(), "floor", 8, 8.0, ["query", "value"])
    below = []
    model.bert.embeddings.register_forward_hook(lambda _m, _i, out: below.append(out.requires_grad))
    out = model(input_ids=torch.randint(5, 90, (2, 6)), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert len(reached) == 4 and all(g.shape == (2, 6, 32) and g.abs().sum() > 0 for g in reached)
    assert below == [False]  # nothing below the lowest adapted module needs a gradient
    assert all(p.grad is None for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0


def test_header_names_the_machine(capsys):
    cpu = bench.machine("cpu")
    assert cpu["torch"] == torch.__version__ and cpu["cpu"] and "transformers" in cpu and "gpu" not in cpu
    line = bench.describe(cpu)
    assert line.startswith("machine: CPU ") and f"torch {torch.__version__}" in line
    gpu = {**cpu, "gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "gpu_capability": "9.0", "cuda": "13.0",
           "cudnn": 91900}
    assert "NVIDIA H200 (139.8 GiB, compute capability 9.0), CUDA 13.0" in bench.describe(gpu)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "examples per step (default: 16)" in text and "--floor" in text and "(default: query,value)" in text


def test_old_flag_spellings_still_parse():
    old = parse("--targets", "q,v", "--dtype", "bf16", "--no-progress", "--methods", "peft-lora")
    new = parse("--target-modules", "q,v", "--precision", "bf16", "--quiet", "--methods", "lora")
    for key in ("target_modules", "precision", "quiet"):
        assert getattr(old, key) == getattr(new, key)
    assert bench_cli.check_args(old) == bench_cli.check_args(new) == ["lora"]
    assert parse().alpha == 8.0


def test_tiny_end_to_end_run(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_bert().save_pretrained(folder)
    out = tmp_path / "bench.json"
    args = parse("--model", str(folder), "--batch-size", "2", "--max-length", "8", "--steps", "2", "--warmup", "1",
                 "--repeats", "2", "--methods", "base,lora,condlora,infer-merged", "--floor", "--threads", "1",
                 "--json", str(out), "--quiet")
    assert bench_cli.main(args) == 0
    data = json.loads(out.read_text())
    res = data["results"]
    assert set(res) == {"floor", "base", "lora", "condlora", "infer-merged"}
    assert data["settings"]["methods"] == "floor,base,lora,condlora,infer-merged"
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["cpu"]
    head = 32 * 2 + 2
    assert res["floor"]["trainable"] == 0
    assert res["base"]["trainable"] == head
    assert res["lora"]["trainable"] == head + 2 * 2 * (8 * 32 + 32 * 8)  # 2 layers x query, value
    assert res["condlora"]["trainable"] == head + 2 * (8 * 32 + 8 * 32)  # one generator per module type
    assert res["infer-merged"]["trainable"] == 0
    for r in res.values():
        assert len(r["run_medians_s"]) == 2 and r["step_s"] > 0
        assert r["step_mb"] > 0 and r["rss_peak_mb"] >= 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: CPU ") and "x floor" in printed and "condlora" in printed


def test_worker_command_passes_every_flag():
    from condlora.bench import worker as bench_worker

    args = parse("--model", "m", "--methods", "condlora", "--trust-remote-code", "--compile", "--r", "4")
    cmd = bench.worker_command("condlora", args)
    assert cmd[1:3] == ["-m", "condlora.bench.worker"]
    w = bench_worker.parse_args(cmd[3:])
    assert (w.method, w.model, w.r, w.trust_remote_code, w.compile) == ("condlora", "m", 4, True, True)
    assert not bench_worker.parse_args(bench.worker_command("base", parse("--model", "m"))[3:]).compile


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]])
def test_worker_passes_trust_remote_code_to_the_loader(monkeypatch, flag):
    import condlora.runner.models
    from condlora.bench import worker as bench_worker
    from condlora.errors import CondLoRAError

    seen = []

    def spy(name, *args, trust_remote_code=False, **kwargs):
        seen.append(trust_remote_code)
        raise CondLoRAError("stop")

    monkeypatch.setattr(condlora.runner.models, "load_classifier", spy)
    with pytest.raises(CondLoRAError, match="stop"):
        bench_worker.Runner(bench_worker.parse_args(["--method", "base", "--model", "m", "--batch-size", "1",
                                                     "--max-length", "4", *flag]))
    assert seen == [bool(flag)]


def gpu_bench(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """scripts/gpu-bench.sh run with `env`, its output folder under tmp_path."""
    full = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu-bench.sh")], env=full, capture_output=True,
                          text=True, timeout=300)


def test_gpu_bench_runs_the_five_regimes_on_cuda(tmp_path):
    done = gpu_bench(tmp_path, GPU_BENCH_PLAN="1")
    assert done.returncode == 0, done.stderr
    cmds = [c.split() for c in done.stdout.splitlines()]
    assert len(cmds) == 5
    flag = {tuple(c[c.index(f) + 1] for f in ("--precision", "--batch-size", "--max-length")) for c in cmds}
    assert flag == {("bf16", "16", "128"), ("fp32", "16", "128"), ("bf16", "64", "256"), ("fp32", "64", "256")}
    compiled = [c for c in cmds if "--compile" in c]
    assert len(compiled) == 1 and compiled[0][compiled[0].index("--precision") + 1] == "bf16"
    assert "--compile" in cmds[0]  # the compiled regime first, so the time budget never cuts it
    for i, c in zip((5, 1, 2, 3, 4), cmds, strict=True):
        assert c[1:4] == ["-m", "condlora", "bench"] and "--floor" in c
        assert c[c.index("--model") + 1] == "roberta-base-random" and c[c.index("--device") + 1] == "cuda"
        assert c[c.index("--repeats") + 1] == "3" and c[c.index("--json") + 1] == str(tmp_path / f"out/regime{i}.json")
        methods = c[c.index("--methods") + 1].split(",")
        assert {"base", "lora", "condlora"} <= set(methods)
        assert ("infer-merged" in methods) == ("--compile" not in c)
    only = gpu_bench(tmp_path, GPU_BENCH_PLAN="1", GPU_BENCH_ONLY="2,5").stdout.splitlines()
    assert [line.split("--json ")[1] for line in only] == [str(tmp_path / f"out/regime{i}.json") for i in (5, 2)]


def test_gpu_bench_dry_run_writes_the_summary(tmp_path):
    done = gpu_bench(tmp_path, GPU_BENCH_DRY="1", GPU_BENCH_ONLY="2")
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    data = json.loads((out / "regime2.json").read_text())
    assert set(data["results"]) == {"floor", "lora", "condlora", "infer-merged"}
    assert data["settings"]["precision"] == "fp32" and data["machine"]["cpu"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("Machine: CPU ") and summary in done.stdout
    row = next(line for line in summary.splitlines() if line.startswith("| fp32, batch 2, length 8 |"))
    assert len(row.split("|")) == 13 and row.count(" - ") == 3  # base, native LoRA, native x peft did not run
    assert "x floor" in (out / "regime2.log").read_text()


def test_gpu_bench_table_on_known_numbers(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_bench_table", ROOT / "scripts" / "gpu_bench_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = {"floor": row(0.010, 50), "base": row(0.012, 60), "lora": row(0.020, 100), "condlora": row(0.018, 90),
               "infer-base": row(0.004, 1), "infer-merged": row(0.005, 1)}
    settings = {"precision": "bf16", "batch_size": 16, "max_length": 128, "compile": True}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"settings": settings, "machine": bench.machine(), "results": results}))
    assert module.main([str(path), str(tmp_path / "missing.json")]) == 0
    text = capsys.readouterr().out
    label = "| bf16, batch 16, length 128, `--compile` |"
    assert f"{label} 10.0 | 12.0 | 20.0 | - | 18.0 | 0.90 | - | 1.80 | 2.00 | 0.90 |" in text
    assert f"{label} 4.0 | 5.0 | - | 1.25 | - |" in text
    assert "(no result: missing)" in text


def test_worker_sets_the_problem_type_so_compiled_steps_do_not_recompile(tmp_path):
    from condlora.bench import worker as bench_worker

    folder = tmp_path / "tiny"
    tiny_bert().save_pretrained(folder)
    runner = bench_worker.Runner(bench_worker.parse_args(["--method", "floor", "--model", str(folder),
                                                          "--batch-size", "2", "--max-length", "4"]))
    assert runner.model.config.problem_type == "single_label_classification"
    assert runner.opt is None and runner.trainable == 0
    runner.step()
