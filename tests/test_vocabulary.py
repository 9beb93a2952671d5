"""One vocabulary: `--method condlora` is AdapterConfig's default (general) form, `condlora-paper` the paper's;
runs keep their stored folder names, so old run folders load with their meaning."""

import json
from pathlib import Path

import pytest

from condlora import AdapterConfig
from condlora.cli import build_parser
from condlora.cli import main as cli_main
from condlora.cli.study import settings_from_args
from condlora.errors import ConfigError
from condlora.runner.names import stored_method, user_method
from condlora.study.runs import same_run
from condlora.study.tables import METHOD_LABELS

ROOT = Path(__file__).resolve().parents[1]
OLD_PAPER_RUN = ROOT / "docs/results/converged/runs/mrpc/condlora/seed0"  # written before the rename
OLD_GENERAL_RUN = ROOT / "docs/results/converged/runs/mrpc/condlora-general/seed0"


def test_user_names_map_to_the_stored_folders_and_back():
    assert AdapterConfig(method="condlora").cond_form == "general"
    assert stored_method("condlora") == stored_method("condlora-general") == "condlora-general"
    assert stored_method("condlora-paper") == "condlora" and stored_method("lora") == "lora"
    assert user_method("condlora-general") == "condlora" and user_method("condlora") == "condlora-paper"
    assert METHOD_LABELS["condlora-general"] == "CondLoRA" and "paper" in METHOD_LABELS["condlora"]
    with pytest.raises(ConfigError, match="condlora-paper"):
        stored_method("condlora", "paper")
    with pytest.raises(ConfigError, match="method must be one of"):
        stored_method("condlora-auto")


@pytest.mark.parametrize(("flags", "method", "form"), [
    ([], "condlora-general", "auto"),
    (["--method", "condlora"], "condlora-general", "auto"),
    (["--method", "condlora-general"], "condlora-general", "auto"),
    (["--method", "condlora-paper"], "condlora", "auto"),
    (["--method", "condlora-frozen-a", "--cond-form", "general"], "condlora-frozen-a", "general"),
])
def test_train_flags_give_the_stored_run_record(tmp_path, monkeypatch, flags, method, form):
    import condlora.runner.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, on_step=None: seen.append(cfg))
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    assert cli_main(["train", "--train-file", str(data), "--output-dir", str(tmp_path / "run"), *flags]) == 0
    assert (seen[0].method, seen[0].cond_form) == (method, form)


def test_old_run_folders_keep_their_meaning():
    old = json.loads((OLD_PAPER_RUN / "config.json").read_text())["run"]
    assert (old["method"], old["cond_form"]) == ("condlora", "auto")  # the paper's form, stored as condlora/
    general = json.loads((OLD_GENERAL_RUN / "config.json").read_text())["run"]
    assert general["method"] == "condlora-general"
    args = build_parser("study").parse_args(
        ["study", "--methods", "lora,condlora-paper,condlora", "--output-dir", "x"])
    methods = list(settings_from_args(args).methods)
    assert methods == ["lora", "condlora", "condlora-general"]  # the folders the old runs sit in
    done = json.loads((OLD_PAPER_RUN / "results.json").read_text())
    assert same_run(done, {"seed": 0, "method": methods[1], "lr": done["lr"]})


def test_study_refuses_both_names_of_the_general_form():
    args = build_parser("study").parse_args(["study", "--methods", "condlora,condlora-general", "--output-dir", "x"])
    with pytest.raises(ConfigError, match="same method"):
        settings_from_args(args)
