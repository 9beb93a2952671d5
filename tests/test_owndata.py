"""Own data files (`--train-file` ...): CSV / TSV / JSON lines runs on a tiny BERT, label inference, metrics,
run identity by file hash, hostile files (one line naming file, line and column; nothing written), study."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condlora.cli import main as cli_main
from condlora.errors import CondLoRAError, ConfigError
from condlora.runner.owndata import infer_labels, load_files, read_table
from condlora.runner.train import TrainConfig
from glue_fixtures import make_tiny_model_dir, real_glue_dir, sentence

N = 40

POOLER = 32 * 32 + 32  # --head dense (the default) trains the tiny BERT's pooler beside the classifier


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest.py)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("owndata") / "model"))


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",", bom: bool = False) -> Path:
    """A CSV/TSV file written with Python's csv module (real quoting)."""
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_argv(model: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", model, "--output-dir", str(out), "--method", "lora", "--epochs", "1", "--lr", "1e-2",
            "--batch-size", "8", "--max-length", "32", "--quiet", *extra]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_string_labels_csv_with_the_glue_split(model, tmp_path):
    rows = [[sentence(i), "pos" if i % 2 else "neg"] for i in range(N)]
    rows[3][0] = 'a "quoted", comma\nand a new line'
    train = write_csv(tmp_path / "reviews.csv", ["text", "label"], rows, bom=True)
    out = tmp_path / "run"
    assert cli_main(train_argv(model, out, "--train-file", str(train))) == 0
    res = results(out)
    assert (res["task"], res["metric"], res["task_type"], res["labels"]) == ("reviews", "accuracy", "classification",
                                                                              ["neg", "pos"])
    assert (res["train_size"], res["val_size"], res["test_size"], res["test_score"]) == (36, 4, 0, None)
    assert set(res["val_metrics"]) == {"accuracy", "f1"} and res["test_metrics"] == {}
    assert (res["text_columns"], res["label_column"], res["data_files"]) == (["text"], "label", {"train": str(train)})
    run = json.loads((out / "config.json").read_text())["run"]
    assert run["train_file"] == str(train) and "validation_file" not in run
    assert run["data_sha256"] == {"train": hashlib.sha256(train.read_bytes()).hexdigest()}
    assert (out / "best_adapter").is_dir() and len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_int_labels_jsonl_two_columns_validation_and_test_files(model, tmp_path):
    def rows(n: int, shift: int = 0) -> list[dict]:
        return [{"id": i, "sentence1": sentence(i + shift), "sentence2": sentence(i + 7, 3), "label": i % 3}
                for i in range(n)]

    files = {f: write_jsonl(tmp_path / f"{f}.jsonl", rows(n, k)) for k, (f, n) in
             enumerate((("train", N), ("dev", 9), ("test", 12)))}
    out = tmp_path / "run"
    assert cli_main(train_argv(model, out, "--train-file", str(files["train"]), "--validation-file",
                               str(files["dev"]), "--test-file", str(files["test"]), "--metric", "mcc",
                               "--task-name", "triples")) == 0
    res = results(out)
    assert (res["task"], res["metric"], res["labels"]) == ("triples", "matthews", [0, 1, 2])
    assert res["head_params"] == 99 + POOLER
    assert res["text_columns"] == ["sentence1", "sentence2"]
    assert (res["train_size"], res["val_size"], res["test_size"]) == (N, 9, 12)
    assert set(res["test_metrics"]) == {"accuracy", "matthews"} and res["test_score"] == res["test_metrics"]["matthews"]
    assert set(json.loads((out / "config.json").read_text())["run"]["data_sha256"]) == {"train", "validation", "test"}


def test_float_labels_are_regression_with_pearson(model, tmp_path):
    rows = [[sentence(i), sentence(i + 3, 2), i % 2 if i % 4 else (i % 11) / 2] for i in range(N)]
    train = write_csv(tmp_path / "scores.tsv", ["a", "b", "score"], rows, delimiter="\t")
    test = write_csv(tmp_path / "scores_test.tsv", ["a", "b", "score"], rows[:10], delimiter="\t")
    out = tmp_path / "run"
    assert cli_main(train_argv(model, out, "--train-file", str(train), "--test-file", str(test), "--text-columns",
                               "a,b", "--label-column", "score")) == 0
    res = results(out)
    assert (res["metric"], res["task_type"], res["labels"]) == ("pearson", "regression", None)
    assert res["head_params"] == 33 + POOLER
    assert set(res["test_metrics"]) == {"pearson", "spearman"} and -1 <= res["test_score"] <= 1


def test_changed_file_is_another_run_and_same_file_is_reused(model, tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", ["text", "label"], [[sentence(i), i % 2] for i in range(20)])
    out = tmp_path / "run"
    argv = train_argv(model, out, "--train-file", str(train), "--epochs", "0.5")
    assert cli_main(argv) == 0
    before = (out / "results.json").stat().st_mtime_ns
    assert cli_main(argv) == 0 and (out / "results.json").stat().st_mtime_ns == before
    with open(train, "a", encoding="utf-8") as f:
        f.write("one more row,1\n")
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert "holds a different run (data_sha256" in capsys.readouterr().err


def cfg(path: Path, **kw) -> TrainConfig:
    return TrainConfig(train_file=str(path), **kw)


def test_label_ids_follow_sorted_labels(tmp_path):
    def ids(data) -> dict[str, int]:
        return {t[0]: y for t, y in zip(data.train.texts, data.train.labels, strict=True)}

    ints = write_csv(tmp_path / "i.csv", ["text", "label"], [[f"t{i}", v] for i, v in enumerate((5, -1, 5, "1.0", 2))])
    assert ids(load_files(cfg(ints, validation_file=str(ints)))) == {"t0": 3, "t1": 0, "t2": 3, "t3": 1, "t4": 2}
    assert infer_labels(read_table(ints), "label") == (-1, 1, 2, 5)
    strings = write_jsonl(tmp_path / "s.jsonl", [{"text": f"t{i}", "label": v} for i, v in enumerate("baca")])
    data = load_files(cfg(strings, validation_file=str(strings)))
    assert (data.task.labels, data.task.metric) == (("a", "b", "c"), "accuracy")
    assert ids(data) == {"t0": 1, "t1": 0, "t2": 2, "t3": 0}
    mixed = write_csv(tmp_path / "m.csv", ["text", "label"], [["x", "1"], ["y", "2.5"], ["z", "0"]])
    assert infer_labels(read_table(mixed), "label") is None


def test_sorted_files_are_shuffled_so_max_samples_take_random_rows(tmp_path):
    path = write_csv(tmp_path / "sorted.csv", ["text", "label"], [[f"t{i}", i >= 20] for i in range(40)])
    data = load_files(cfg(path, validation_file=str(path)))
    assert sorted(data.train.texts) == sorted((f"t{i}",) for i in range(40))
    assert set(data.train.labels[:8]) == {0, 1} and set(data.val.labels[:8]) == {0, 1}


def test_quoted_fields_and_bom_are_read_exactly(tmp_path):
    texts = ['comma, inside', 'new\nline', 'a "quote"', "tab\tinside", " spaces "]
    for delimiter, ext in ((",", "csv"), ("\t", "tsv")):
        path = write_csv(tmp_path / f"q.{ext}", ["text", "label"], [[t, i % 2] for i, t in enumerate(texts)],
                         delimiter=delimiter, bom=True)
        table = read_table(path)
        assert table.columns == ["text", "label"] and [r["text"] for _, r in table.rows] == texts
        assert [line for line, _ in table.rows] == [2, 3, 5, 6, 7]  # the new line makes row 3 two lines long


@pytest.mark.parametrize("columns, expected", [
    (["sentence2", "id", "sentence1", "label"], ("sentence1", "sentence2")),
    (["id", "text", "sentence", "label"], ("text",)),
    (["premise", "label", "hypothesis"], ("premise", "hypothesis")),
])
def test_default_text_columns(tmp_path, columns, expected):
    path = write_csv(tmp_path / "d.csv", columns, [[f"{c}{i}" if c != "label" else i % 2 for c in columns]
                                                   for i in range(4)])
    data = load_files(cfg(path, validation_file=str(path)))
    assert data.task.text_cols == expected


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"condlora {command}: error: "), err
    return err[0]


HEAD = "text,label\n"
GOOD = HEAD + "a,x\nb,y\n"
# name -> (file name, content, extra flags, expected message); {f} is the bad file's path
HOSTILE = {
    "missing file": ("nope.csv", None, [], "{f}: file not found (--train-file)"),
    "empty file": ("t.csv", "", [], "{f} line 1: the file is empty"),
    "blank file": ("t.jsonl", "\n  \n", [], "{f} line 1: the file is empty"),
    "header only": ("t.csv", HEAD, [], "{f} line 2: no data rows after the header"),
    "missing column": ("t.csv", GOOD, ["--label-column", "labl"],
                       "{f} line 1, column 'labl': not found; the file has columns 'text', 'label'"),
    "missing text column": ("t.csv", GOOD, ["--text-columns", "text,other"], "{f} line 1, column 'other'"),
    "no guessable text": ("t.csv", "a,b,c,label\n1,2,3,x\n", [], "{f} line 1: cannot tell the text columns"),
    "empty label": ("t.csv", HEAD + "a,x\nb,\nc,y\n", [], "{f} line 3, column 'label': empty label"),
    "not a number in regression": ("t.csv", HEAD + "a,0.5\nb,1\nc,n/a\n", [],
                                   "{f} line 4, column 'label': label 'n/a' is not a number, but line 2 holds"),
    "one label": ("t.csv", HEAD + "a,x\nb,x\n", [], "{f} line 2, column 'label': every label is 'x'"),
    "too many fields": ("t.csv", HEAD + "a,x\nb,c,y\n", [], "{f} line 3, field 3: the row has 3 fields"),
    "too few fields": ("t.csv", HEAD + "a,x\nb\n", [], "{f} line 3, column 'label': missing"),
    "unclosed quote": ("t.csv", HEAD + 'a,x\n"b,y\nc,x\n', [], "{f} line 3 (to line 4): bad quoting"),
    "bare quotes in tsv": ("t.tsv", 'text\tlabel\na\tx\n" b " said he\ty\n', [], "{f} line 3: bad quoting"),
    "duplicate column": ("t.csv", "text,label,text\na,x,b\n", [], "{f} line 1, column 'text': appears twice"),
    "not utf-8": ("t.csv", (HEAD + "a,x\n").encode() + b"\xff,y\n", [], "{f} line 3: not valid UTF-8"),
    "bad json": ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b" "label": 0}\n', [],
                 "{f} line 2, character 14: not valid JSON"),
    "json array": ("t.json", '[{"text": "a", "label": 1}]\n', [], "read as JSON lines"),
    "json row lacks label": ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', [],
                             "{f} line 2, column 'label': missing"),
    "json text not a string": ("t.jsonl", '{"text": "a", "label": 1}\n{"text": 7, "label": 0}\n', [],
                               "{f} line 2, column 'text': expected a string, found 7"),
    "json bool label": ("t.jsonl", '{"text": "a", "label": true}\n', [], "{f} line 1, column 'label': label must be"),
    "unknown extension": ("t.txt", GOOD, [], "--train-file {f}: unknown file type"),
    "metric for the other type": ("t.csv", GOOD, ["--metric", "pearson"], "--metric pearson does not fit {f}"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_train_file(model, tmp_path, capsys, case):
    name, content, flags, message = HOSTILE[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "run"
    capsys.readouterr()
    assert cli_main(train_argv(model, out, "--train-file", str(path), *flags)) == 2
    assert message.format(f=path) in _one_line_error(capsys, "train")
    assert not out.exists()


@pytest.mark.parametrize("role, content, message", [
    ("--validation-file", HEAD + "a,x\nb,maybe\n", "{f} line 3, column 'label': label 'maybe' is not one of the "
                                                  "train file's labels (x, y)"),
    ("--test-file", "text,lab\na,x\n", "{f} line 1, column 'label': not found; the file has columns 'text', 'lab'"),
    ("--test-file", HEAD + "a,x\nb,2\n", "{f} line 3, column 'label': label '2' is not one of"),
])
def test_hostile_validation_and_test_files(model, tmp_path, capsys, role, content, message):
    train = tmp_path / "train.csv"
    train.write_text(GOOD * 1, encoding="utf-8")
    other = tmp_path / "other.csv"
    other.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    capsys.readouterr()
    assert cli_main(train_argv(model, out, "--train-file", str(train), role, str(other))) == 2
    assert message.format(f=other) in _one_line_error(capsys, "train")
    assert not out.exists()


def test_regression_validation_label_must_be_a_number(tmp_path):
    train = write_csv(tmp_path / "r.csv", ["text", "label"], [["a", 0.5], ["b", 2]])
    dev = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", "high"]])
    with pytest.raises(CondLoRAError, match=rf"^{dev} line 2, column 'label': label 'high' is not a number"):
        load_files(cfg(train, validation_file=str(dev)))


@pytest.mark.parametrize("argv, message", [
    (["--task", "rte", "--train-file", "x.csv"], "--task (GLUE) and --train-file (own data) exclude each other"),
    ([], "give a GLUE task (--task) or own data files (--train-file)"),
    (["--task", "rte", "--text-columns", "a"], "--text-columns needs --train-file"),
    (["--task-name", "x"], "--task-name needs --train-file"),
    (["--train-file", "{d}/sst2.csv"], "task name 'sst2' is a GLUE task; name the task of"),
    (["--train-file", "{d}/t.csv", "--task-name", "a/b"], "task name 'a/b': use letters"),
])
def test_flag_combinations(model, tmp_path, capsys, argv, message):
    for name in ("sst2.csv", "t.csv"):
        (tmp_path / name).write_text(GOOD, encoding="utf-8")
    out = tmp_path / "run"
    capsys.readouterr()
    assert cli_main(train_argv(model, out, *[a.format(d=tmp_path) for a in argv])) == 2
    assert message in _one_line_error(capsys, "train")
    assert not out.exists()


def test_config_errors_name_the_field(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["text", "label"], [["a", "x"], ["b", "y"]])
    with pytest.raises(ConfigError, match="metric must be one of"):
        cfg(path, metric="auc")
    with pytest.raises(ConfigError, match="text_columns: give one or two"):
        cfg(path, text_columns="a,b,c")
    with pytest.raises(ConfigError, match="label_column needs train_file"):
        TrainConfig(task="rte", label_column="y")
    assert "train_file" not in TrainConfig(task="rte").run_dict()  # GLUE runs keep their config.json


CELL = st.text(alphabet=st.sampled_from(list('ab ,"\t\n\r1.5-') + ["\ufeff", "é"]), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(CELL, min_size=1, max_size=3), max_size=5), ext=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_any_file_loads_or_names_file_and_line(tmp_path, rows, ext):
    path = tmp_path / f"any.{ext}"
    path.write_text("text,label\n" + "\n".join(",".join(r) for r in rows), encoding="utf-8")
    try:
        data = load_files(cfg(path, validation_file=str(path)))
    except CondLoRAError as e:
        assert str(e).startswith(str(path)) and " line " in str(e), e
        return
    assert len(data.train) >= 1 and all(len(t) == 1 and isinstance(t[0], str) for t in data.train.texts)
    assert data.task.is_regression or set(data.train.labels) == set(range(data.task.num_labels))


def test_study_on_own_files(model, tmp_path, capsys, recwarn):
    rows = [[sentence(i), "yes" if i % 2 else "no"] for i in range(N)]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    test = write_csv(tmp_path / "test.csv", ["text", "label"], rows[:11])  # 6 "no", 5 "yes"
    out = tmp_path / "study"
    argv = ["study", "--methods", "lora,condlora-paper", "--seeds", "1", "--lr", "1e-2", "--model", model,
            "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--output-dir", str(out), "--quiet",
            "--train-file", str(train), "--test-file", str(test), "--task-name", "yesno"]
    assert cli_main(argv) == 0
    assert not [w for w in recwarn if "task" in str(w.message) or "baseline" in str(w.message)]  # GLUE-only
    saved = json.loads((out / "study.json").read_text())
    assert saved["complete"] and saved["settings"]["tasks"] == ["yesno"] and len(saved["runs"]) == 2
    assert set(saved["settings"]["run_args"]["data_sha256"]) == {"train", "test"}
    assert (out / "runs" / "yesno" / "condlora" / "seed0" / "results.json").exists()
    table2 = (out / "table2.md").read_text()
    assert "| yesno" in table2 and "Test = --test-file" in table2
    assert "| Trivial baseline (majority class; 0 for MCC, Pearson) | 54.55 |" in table2  # of the test file
    assert "GLUE" not in table2
    table4 = (out / "table4.md").read_text()
    assert "published" not in table2 and "published" not in table4  # roberta-base GLUE rows: not beside own data
    assert "shared the cores" in table4 and "condlora bench" in table4
    train.write_text(train.read_text() + "one more,no\n")
    capsys.readouterr()
    assert cli_main(argv) == 2 and "other run settings (data_sha256)" in _one_line_error(capsys, "study")
    assert cli_main(argv[:-4] + ["--task-name", "x"]) == 2
    assert "needs --test-file" in _one_line_error(capsys, "study")
    assert cli_main(argv + ["--tasks", "rte"]) == 2
    assert "--tasks (GLUE) and --train-file (own data) exclude each other" in _one_line_error(capsys, "study")


@pytest.mark.slow
def test_real_sst2_rows_as_a_csv_with_string_labels(model, tmp_path):
    glue = real_glue_dir()
    if glue is None:
        pytest.skip("no real GLUE folder")
    lines = (glue / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:201]
    rows = [[s, "pos" if y == "1" else "neg"] for s, y in (line.split("\t") for line in lines)]
    train = write_csv(tmp_path / "sst2_dev200.csv", ["text", "label"], rows)
    out = tmp_path / "run"
    assert cli_main(train_argv(model, out, "--train-file", str(train), "--max-train-samples", "64")) == 0
    res = results(out)
    assert (res["task"], res["labels"], res["train_size"], res["val_size"]) == ("sst2_dev200", ["neg", "pos"], 64, 20)
