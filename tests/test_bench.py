"""`condlora bench`: argument errors, the table and targets on known numbers, one tiny end-to-end run."""

import argparse
import json

import pytest
import torch

from condlora import bench
from condlora.cli import main as cli_main
from conftest import tiny_bert


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
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


def test_ratios_table_and_targets_on_known_numbers():
    results = {"base": row(1.0, 100), "peft-lora": row(1.1, 120), "condlora": row(1.02, 110),
               "infer-base": row(0.5, 10), "infer-merged": row(0.5, 10), "infer-condlora": row(0.55, 12)}
    targets = {t["target"]: t for t in bench.check_targets(results)}
    assert len(targets) == 5
    assert targets["condlora step <= 0.95 x peft-lora step"]["ratio"] == pytest.approx(1.02 / 1.1)
    assert targets["condlora step <= 0.95 x peft-lora step"]["met"] is True
    assert targets["condlora step <= 1.05 x base step"]["met"] is True
    assert targets["condlora peak memory <= peft-lora"]["met"] is True
    assert targets["unmerged eval condlora <= 1.05 x base inference"]["ratio"] == pytest.approx(1.1)
    assert targets["unmerged eval condlora <= 1.05 x base inference"]["met"] is False
    text = bench.table(results)
    assert "0.927" in text.splitlines()[4]  # condlora vs peft-lora
    assert bench.check_targets({"base": row(1, 1)})[0]["met"] is None


def test_tiny_end_to_end_run(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_bert().save_pretrained(folder)
    out = tmp_path / "bench.json"
    args = parse("--model", str(folder), "--batch-size", "2", "--max-length", "8", "--steps", "2", "--warmup", "1",
                 "--repeats", "2", "--methods", "base,peft-lora,condlora,infer-merged", "--threads", "1",
                 "--json", str(out), "--no-progress")
    assert bench.main(args) == 0
    data = json.loads(out.read_text())
    res = data["results"]
    assert set(res) == {"base", "peft-lora", "condlora", "infer-merged"}
    head = 32 * 2 + 2
    assert res["base"]["trainable"] == head
    assert res["peft-lora"]["trainable"] == head + 2 * 2 * (8 * 32 + 32 * 8)  # 2 layers x query, value
    assert res["condlora"]["trainable"] == head + 2 * (8 * 32 + 8 * 32)  # one generator per module type
    assert res["infer-merged"]["trainable"] == 0
    for r in res.values():
        assert len(r["run_medians_s"]) == 2 and r["step_s"] > 0
        assert r["step_mb"] > 0 and r["rss_peak_mb"] >= 0
    assert "condlora" in capsys.readouterr().out


def test_worker_command_passes_every_flag():
    from condlora import bench_worker

    args = parse("--model", "m", "--methods", "condlora", "--trust-remote-code", "--compile", "--r", "4")
    cmd = bench.worker_command("condlora", args)
    assert cmd[1:3] == ["-m", "condlora.bench_worker"]
    w = bench_worker.parse_args(cmd[3:])
    assert (w.method, w.model, w.r, w.trust_remote_code, w.compile) == ("condlora", "m", 4, True, True)
    assert not bench_worker.parse_args(bench.worker_command("base", parse("--model", "m"))[3:]).compile


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]])
def test_worker_passes_trust_remote_code_to_the_loader(monkeypatch, flag):
    import condlora.models
    from condlora import bench_worker
    from condlora.errors import CondLoRAError

    seen = []

    def spy(name, *args, trust_remote_code=False, **kwargs):
        seen.append(trust_remote_code)
        raise CondLoRAError("stop")

    monkeypatch.setattr(condlora.models, "load_classifier", spy)
    with pytest.raises(CondLoRAError, match="stop"):
        bench_worker.Runner(bench_worker.parse_args(["--method", "base", "--model", "m", "--batch-size", "1",
                                                     "--max-length", "4", *flag]))
    assert seen == [bool(flag)]
