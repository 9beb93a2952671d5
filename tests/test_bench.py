"""`condlora bench`: argument errors, the table on known numbers, one tiny end-to-end run."""

import argparse
import json

import pytest
import torch

from condlora.bench import bench
from condlora.cli import bench as bench_cli
from condlora.cli import main as cli_main
from conftest import tiny_bert


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
                 "--repeats", "2", "--methods", "base,lora,condlora,infer-merged", "--threads", "1",
                 "--json", str(out), "--quiet")
    assert bench_cli.main(args) == 0
    data = json.loads(out.read_text())
    res = data["results"]
    assert set(res) == {"base", "lora", "condlora", "infer-merged"}
    head = 32 * 2 + 2
    assert res["base"]["trainable"] == head
    assert res["lora"]["trainable"] == head + 2 * 2 * (8 * 32 + 32 * 8)  # 2 layers x query, value
    assert res["condlora"]["trainable"] == head + 2 * (8 * 32 + 8 * 32)  # one generator per module type
    assert res["infer-merged"]["trainable"] == 0
    for r in res.values():
        assert len(r["run_medians_s"]) == 2 and r["step_s"] > 0
        assert r["step_mb"] > 0 and r["rss_peak_mb"] >= 0
    assert "condlora" in capsys.readouterr().out


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
