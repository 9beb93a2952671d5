"""The command line's first contact: one-line argument errors that come before torch is imported, defaults in
every `-h`, and `condlora export` saying when it repeats what `condlora train` already wrote."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from condlora.cli import COMMANDS
from condlora.cli import main as cli_main

SRC = Path(__file__).resolve().parents[1] / "src"
BAD_ARGS = [["train", "--r", "0"], ["train", "--method", "nope"], ["study", "--methods", "condlora,condlora-general",
            "--output-dir", "x"], ["export"], ["analyze", "--model", "m"], ["bench", "--repeats", "x"]]


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m condlora ARGS` in a fresh process, and its wall time."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "condlora", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("args", BAD_ARGS, ids=lambda a: " ".join(a[:2]))
def test_argument_errors_are_one_fast_line(args):
    done, seconds = run_cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "error:" in done.stderr, done.stderr
    assert seconds < 1.5, f"{seconds:.2f} s: the arguments must be checked before torch is imported"


def test_argument_checks_import_no_torch():
    code = ("import sys; from condlora.cli import build_parser; import condlora.cli.train, condlora.cli.study, "
            "condlora.cli.export, condlora.cli.analyze, condlora.cli.bench; print('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit):
        cli_main([command, "-h"])
    text = capsys.readouterr().out
    assert text.count("(default") >= 2 or command == "export", text


def test_glue_task_names_match_the_data_module():
    from condlora.runner.glue import TASKS
    from condlora.runner.names import GLUE_TASKS

    assert GLUE_TASKS == tuple(TASKS)


def test_export_says_it_repeats_train_s_peft_folder(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from condlora import AdapterConfig, apply_adapter, export_peft_lora, save_adapter
    from glue_fixtures import make_tiny_model_dir

    base = make_tiny_model_dir(tmp_path / "model")
    model = apply_adapter(AutoModelForSequenceClassification.from_pretrained(base, num_labels=2),
                          AdapterConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"]))
    save_adapter(model, tmp_path / "run" / "best_adapter")
    export_peft_lora(model, tmp_path / "run" / "best_adapter_peft")
    capsys.readouterr()
    assert cli_main(["export", "--model", str(base), "--adapter", str(tmp_path / "run" / "best_adapter"),
                     "--output-dir", str(tmp_path / "peft"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "byte-identical to" in out and "best_adapter_peft" in out


def test_model_loading_errors_name_the_folder_and_what_to_do(tmp_path):
    from condlora.errors import CondLoRAError
    from condlora.runner.models import load_classifier

    with pytest.raises(CondLoRAError, match=f"model folder {tmp_path / 'nope'} does not exist; give an existing"):
        load_classifier(str(tmp_path / "nope"), 2)
    with pytest.raises(CondLoRAError, match=f"model folder {tmp_path} has no config.json"):
        load_classifier(str(tmp_path), 2)


def test_quiet_line_names_task_method_score_and_results():
    from condlora.cli.train import quiet_line

    line = quiet_line("reviews", "condlora-general", {"test_score": 0.875, "metric": "accuracy"}, "runs/r")
    assert line == "reviews condlora: test accuracy 0.8750; results in runs/r/results.json"
