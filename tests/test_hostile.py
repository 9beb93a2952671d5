"""Hostile and wrong input at the CLI and the API: one line, exit 2, nothing written; property tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from condlora import AdapterConfig, apply_adapter, save_adapter
from condlora.cli import main as cli_main
from condlora.errors import CondLoRAError, ConfigError
from condlora.runner.glue import TASKS, read_tsv
from condlora.runner.train import TrainConfig
from glue_fixtures import make_tiny_model_dir, write_glue, write_tsv

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT folder, a trained-looking condlora adapter for it and a small GLUE folder."""
    from condlora.runner.models import load_classifier

    root = tmp_path_factory.mktemp("hostile")
    model = make_tiny_model_dir(root / "model")
    torch.manual_seed(0)
    adapted = apply_adapter(load_classifier(str(model), num_labels=2),
                            AdapterConfig(method="condlora", r=4, modules_to_save=["classifier"]))
    with torch.no_grad():
        for p in adapted.condlora_generators.parameters():
            p.add_(0.1)
    save_adapter(adapted, root / "adapter")
    return {"root": root, "model": str(model), "adapter": root / "adapter",
            "glue": write_glue(root / "glue", n_train=20, n_dev=6, folders=["RTE"])}


def _config(folder: Path, **changes) -> None:
    data = json.loads((folder / "adapter_config.json").read_text())
    data["condlora"].update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(data))


def _tensors(folder: Path, edit) -> None:
    file = folder / "adapter_model.safetensors"
    save_file({k: v.contiguous() for k, v in edit(load_file(file)).items()}, file)


DAMAGES = {
    "missing weights": (lambda d: (d / "adapter_model.safetensors").unlink(), "not found"),
    "missing config": (lambda d: (d / "adapter_config.json").unlink(), "not an adapter folder"),
    "truncated weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(
        (d / "adapter_model.safetensors").read_bytes()[:200]), "not a readable safetensors"),
    "garbage weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\xff" * 64), "safetensors"),
    "bad json": (lambda d: (d / "adapter_config.json").write_text("{oops"), "not valid JSON"),
    "unknown field": (lambda d: _config(d, surprise=1), "surprise"),
    "newer format": (lambda d: _config(d, format_version=99), "newer"),
    "missing field": (lambda d: _config(d, fingerprint=None), "fingerprint"),
    "wrong shape": (lambda d: _tensors(d, lambda t: {k: v[:2] if "theta_A" in k else v for k, v in t.items()}),
                    "shape"),
    "wrong dtype": (lambda d: _tensors(d, lambda t: {k: v.to(torch.int64) for k, v in t.items()}), "floating"),
    "other base model": (lambda d: _config(d, fingerprint={"bert.encoder.layer.0.attention.self.query": [48, 48]}),
                         "does not fit"),
}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request, tiny, tmp_path):
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(tiny["adapter"], folder)
    damage, message = DAMAGES[request.param]
    damage(folder)
    return folder, message


def _one_line_error(capsys, command: str, message: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"condlora {command}: error: "), err
    assert message in err[0], err
    return err[0]


@pytest.mark.parametrize("command", ["export", "analyze"])
def test_damaged_adapter_folder_from_the_cli(tiny, damaged, tmp_path, capsys, command):
    folder, message = damaged
    out = tmp_path / "out"
    argv = [command, "--model", tiny["model"], "--adapter", str(folder), "--output-dir", str(out)]
    capsys.readouterr()
    assert cli_main(argv + ["--quiet"]) == 2
    _one_line_error(capsys, command, message)
    assert not out.exists()


def test_damaged_adapter_in_a_real_process_prints_no_traceback(tiny, tmp_path):
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(tiny["adapter"], folder)
    DAMAGES["truncated weights"][0](folder)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-m", "condlora", "export", "--model", tiny["model"], "--adapter",
                          str(folder), "--output-dir", str(tmp_path / "out"), "--quiet"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "not a readable safetensors" in run.stderr
    assert not (tmp_path / "out").exists()


HEADER = "index\tsentence1\tsentence2\tlabel"
BAD_GLUE = {
    "wrong columns": (b"index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n", "line 1: header lacks"),
    "empty file": (b"", "is empty"),
    "header only": (f"{HEADER}\n".encode(), "is empty (no data rows)"),
    "bad label": (f"{HEADER}\n0\ta\tb\tentailment\n1\ta\tb\tneutral\n".encode(), "line 3: label 'neutral'"),
    "not utf-8": (f"{HEADER}\n0\ta\tb\tentailment\n".encode() + b"1\t\xff\xfe\tb\tentailment\n",
                  "line 3: not valid UTF-8"),
    "short row": (f"{HEADER}\n0\ta\tentailment\n".encode(), "line 2: expected 4 tab-separated columns, found 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_GLUE))
def test_bad_glue_file_from_the_cli_writes_nothing(tiny, tmp_path, capsys, case):
    import shutil

    content, message = BAD_GLUE[case]
    glue = tmp_path / "glue"
    shutil.copytree(tiny["glue"], glue)
    (glue / "RTE" / "train.tsv").write_bytes(content)
    out = tmp_path / "run"
    argv = ["train", "--task", "rte", "--model", tiny["model"], "--glue-dir", str(glue), "--output-dir", str(out),
            "--quiet"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert str(glue / "RTE" / "train.tsv") in _one_line_error(capsys, "train", message)
    assert not out.exists()


def test_bad_glue_error_names_the_file(tiny, tmp_path):
    path = write_tsv(tmp_path / "train.tsv", HEADER, ["0\ta\tb\tentailment", "1\ta\tb\tmaybe"])
    with pytest.raises(CondLoRAError, match=rf"^{path} line 3: label 'maybe' is not one of"):
        read_tsv(path, TASKS["rte"])


def test_models_are_loaded_without_remote_code_unless_asked(tiny, tmp_path, monkeypatch, capsys):
    import condlora.analyze.report
    import condlora.runner.models
    import condlora.runner.train

    seen = []

    def spy(name, *args, trust_remote_code=False, **kwargs):
        seen.append(trust_remote_code)
        raise CondLoRAError("stop")

    for module in (condlora.runner.train, condlora.runner.models, condlora.analyze.report):  # export: models
        monkeypatch.setattr(module, "load_classifier", spy)
    monkeypatch.setattr(condlora.runner.train, "load_tokenizer", spy)
    common = ["--model", tiny["model"], "--output-dir", str(tmp_path / "o")]
    commands = [["train", "--task", "rte", "--glue-dir", str(tiny["glue"]), "--quiet"],
                ["export", "--adapter", str(tiny["adapter"])], ["analyze", "--adapter", str(tiny["adapter"])]]
    for flag in ([], ["--trust-remote-code"]):
        for command in commands:
            seen.clear()
            assert cli_main(command + common + flag) == 2 and seen == [bool(flag)], (command, flag)
    assert "stop" in capsys.readouterr().err


def test_no_pickle_is_loaded_by_the_library():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (SRC / "condlora").glob("*.py"))
    for pattern in ("torch.load(", "pickle.load", "import pickle", "trust_remote_code=True"):
        assert pattern not in text, pattern


ROW_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
LABELS = st.sampled_from(["entailment", "not_entailment", "neutral", "", "0", "Entailment", "entailment "])


@st.composite
def tsv_rows(draw) -> bytes:
    """An RTE-like file: header, rows with 3-5 random columns, labels mostly valid, sometimes raw bytes."""
    header = draw(st.sampled_from([HEADER, "index\tsentence1\tlabel", "", "\ufeff" + HEADER]))
    lines = [header]
    for i in range(draw(st.integers(0, 6))):
        cols = [str(i)] + draw(st.lists(ROW_TEXT, min_size=1, max_size=3)) + [draw(LABELS)]
        lines.append("\t".join(cols))
    data = "\n".join(lines).encode("utf-8")
    if draw(st.booleans()):
        data += draw(st.binary(max_size=8))
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tsv_rows())
def test_any_tsv_either_loads_valid_labels_or_names_file_and_line(tmp_path, data):
    path = tmp_path / "train.tsv"
    path.write_bytes(data)
    try:
        examples = read_tsv(path, TASKS["rte"])
    except CondLoRAError as e:
        assert str(e).startswith(str(path)), e
        assert " line " in str(e) or "is empty" in str(e), e
        return
    assert len(examples) >= 1 and set(examples.labels) <= {0, 1}
    assert all(len(t) == 2 and all("\t" not in s and "\n" not in s for s in t) for t in examples.texts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(score=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6)))
def test_any_stsb_score_is_a_finite_float_or_an_error_with_the_line(tmp_path, score):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    path = write_tsv(tmp_path / "train.tsv", head, [f"0\tg\tf\t2012\t0\ts\ts\ta\tb\t{score}"])
    try:
        examples = read_tsv(path, TASKS["stsb"])
    except CondLoRAError as e:
        assert str(e).startswith(f"{path} line 2") or "is empty" in str(e), e
        return
    assert len(examples) == 1 and torch.isfinite(torch.tensor(examples.labels[0]))


NUMBERS = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                    st.text(max_size=3), st.booleans())


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(["epochs", "lr", "batch_size", "max_length", "r", "alpha", "dropout", "warmup_ratio",
                              "weight_decay", "max_train_samples", "max_eval_samples", "eval_every", "save_every",
                              "seed"]), value=NUMBERS)
def test_any_train_config_value_is_accepted_or_a_config_error_naming_it(field, value):
    try:
        cfg = TrainConfig(task="rte", **{field: value})
    except ConfigError as e:
        assert field in str(e), e
        return
    got = getattr(cfg, field)
    assert got is None or got == got  # not NaN
    if field in ("batch_size", "max_length", "r"):
        assert isinstance(got, int) and not isinstance(got, bool) and got > 0
    if field in ("epochs", "lr", "alpha"):
        assert got > 0 and got != float("inf")
