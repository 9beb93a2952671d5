"""GLUE parsing, the 90/10 split, the hub fallback, batching and metrics."""

from __future__ import annotations

import sys
import types
from collections import Counter

import numpy as np
import pytest

from condlora.errors import CondLoRAError
from condlora.runner.glue import (
    TASKS,
    Encoded,
    Examples,
    get_task,
    load_glue,
    read_tsv,
    split_train,
    subsample,
)
from condlora.runner.metrics import compute_metrics
from glue_fixtures import FOLDERS, make_tokenizer, real_glue_dir, sentence, write_glue, write_tsv


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_glue(tmp_path_factory.mktemp("glue"))


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_task_parses(glue, folder):
    data = load_glue(folder, glue)
    task = data.task
    assert task.folder == folder
    assert (len(data.train), len(data.val)) == (36, 4)
    n_text = 1 if task.name in ("cola", "sst2") else 2
    assert all(len(t) == n_text for t in data.train.texts + data.val.texts)
    if task.name == "stsb":
        assert task.num_labels == 1 and task.is_regression
        assert all(isinstance(y, float) for y in data.train.labels)
        assert sorted(set(data.test.labels)) == [i / 2 for i in range(11)]
    else:
        assert set(data.train.labels + data.test.labels) == set(range(task.num_labels))
    if task.name == "mnli":
        assert {p: len(e) for p, e in data.test_parts.items()} == {"matched": 12, "mismatched": 13}
        assert len(data.test) == 25
        assert data.test_parts["matched"].labels[:3] == [0, 1, 2]  # entailment, neutral, contradiction
    else:
        assert list(data.test_parts) == ["dev"] and len(data.test) == 12


def test_rows_are_read_exactly(glue):
    train = read_tsv(glue / "MRPC" / "train.tsv", get_task("mrpc"))  # BOM header
    assert train.texts[0] == (sentence(0), sentence(11, 3)) and train.texts[0][0].startswith('" ')
    assert train.labels[:4] == [0, 1, 0, 1]
    cola = read_tsv(glue / "CoLA" / "dev.tsv", get_task("cola"))  # no header, no final newline
    assert len(cola) == 12 and cola.texts[0] == (sentence(0),) and cola.texts[-1] == (sentence(11),)
    rte = read_tsv(glue / "RTE" / "dev.tsv", get_task("rte"))
    assert rte.labels[:2] == [0, 1]


def test_task_names():
    assert [get_task(n).name for n in ("SST-2", "sts-b", "CoLA", "MNLI", "qnli")] == ["sst2", "stsb", "cola",
                                                                                      "mnli", "qnli"]
    assert sorted(TASKS) == sorted(["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"])
    with pytest.raises(CondLoRAError, match="unknown task 'wnli'"):
        get_task("wnli")


def test_split_is_the_datasets_shuffle_with_seed_1():
    ex = Examples([(str(i),) for i in range(25)], list(range(25)))
    train, val = split_train(ex)
    order = np.random.default_rng(1).permutation(25).tolist()
    assert val.labels == order[:2] and train.labels == order[2:]  # round(2.5) == 2 (Python's rounding)
    assert sorted(train.labels + val.labels) == list(range(25))
    assert split_train(ex)[1].labels == val.labels
    sub = subsample(ex, 5)
    assert len(sub) == 5 and sub.labels == sorted(sub.labels)


@pytest.mark.parametrize("content, message", [
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", r"bad\.tsv line 3: expected 4 .* found 3"),
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", r"bad\.tsv line 3: label 'maybe'"),
    ("", r"bad\.tsv is empty"),
    ("index\tsentence1\tsentence2\tlabel\n", r"bad\.tsv is empty \(no data rows\)"),
    ("index\ttext\thypothesis\tlabel\n0\ta\tb\tentailment\n", r"bad\.tsv line 1: header lacks column"),
])
def test_file_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CondLoRAError, match=message):
        read_tsv(path, get_task("rte"))


def test_non_utf8_and_bad_score(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"sentence\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(CondLoRAError, match=r"bad\.tsv line 3: not valid UTF-8"):
        read_tsv(path, get_task("sst2"))
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write_tsv(path, header, ["0\tg\tf\ty\t0\tn\tn\ta\tb\thigh"])
    with pytest.raises(CondLoRAError, match=r"line 2: score 'high' is not a number"):
        read_tsv(path, get_task("stsb"))
    with pytest.raises(CondLoRAError, match="not found"):
        load_glue("rte", tmp_path)


def test_hub_fallback(monkeypatch):
    calls = []

    def load_dataset(name, config):
        calls.append((name, config))
        split = {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 0]}
        return {"train": {k: v * 10 for k, v in split.items()}, "validation_matched": split,
                "validation_mismatched": split}

    monkeypatch.delenv("CONDLORA_GLUE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_glue("MNLI")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 4)
    assert data.test_parts["matched"].texts == [("p1", "h1"), ("p2", "h2")] and data.test.labels == [2, 0, 2, 0]
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CondLoRAError, match=r"pip install 'condlora\[data\]'"):
        load_glue("rte")


def test_batches_pad_dynamically(tmp_path):
    tok = make_tokenizer(tmp_path)
    ex = Examples([("the cat", "a dog"), ("the big red cat sat on the mat", "he ran")], [0, 1])
    enc = Encoded(ex, tok, max_length=8)
    batch = enc.batch([0])
    assert batch["input_ids"].tolist() == [[2, 5, 7, 3, 6, 8, 3]]  # [CLS] the cat [SEP] a dog [SEP]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    both = enc.batch([1, 0])
    assert both["input_ids"].shape == (2, 8) and both["attention_mask"][1].tolist() == [1] * 7 + [0]
    assert both["labels"].tolist() == [1, 0]
    fixed = Encoded(ex, tok, max_length=12, pad_to_max_length=True).batch([0])
    assert fixed["input_ids"].shape == (1, 12)


def test_metrics_known_answers():
    cola, stsb, mrpc = get_task("cola"), get_task("stsb"), get_task("mrpc")
    m = compute_metrics(cola, [1, 1, 0, 0], [1, 0, 0, 0])
    assert m["accuracy"] == 0.75 and m["matthews"] == pytest.approx(1 / np.sqrt(3))
    assert compute_metrics(mrpc, [1, 1, 0, 0], [1, 0, 0, 0])["f1"] == pytest.approx(2 / 3)
    s = compute_metrics(stsb, [1.0, 2.0, 3.0, 10.0], [0.5, 1.0, 1.5, 5.0])
    assert s["pearson"] == pytest.approx(1.0) and s["spearman"] == pytest.approx(1.0)
    assert compute_metrics(stsb, [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


REAL = [("RTE", "train.tsv", 2490), ("RTE", "dev.tsv", 277), ("MRPC", "train.tsv", 3668), ("MRPC", "dev.tsv", 408),
        ("STS-B", "train.tsv", 5749), ("STS-B", "dev.tsv", 1500), ("CoLA", "train.tsv", 8551),
        ("CoLA", "dev.tsv", 1043), ("SST-2", "train.tsv", 67349), ("SST-2", "dev.tsv", 872),
        ("QNLI", "dev.tsv", 5463)]


@pytest.mark.slow
def test_real_glue_files_parse_with_readme_counts():
    root = real_glue_dir()
    if root is None:
        pytest.skip("real GLUE files absent: set CONDLORA_GLUE_DIR or provide ../shared/data/glue")
    for folder, name, rows in REAL:
        if not (root / folder / name).is_file():
            continue
        ex = read_tsv(root / folder / name, get_task(folder))
        assert len(ex) == rows, (folder, name)
    rte = read_tsv(root / "RTE" / "train.tsv", get_task("rte"))
    assert Counter(rte.labels) == {0: 1249, 1: 1241}  # README: 1249 entailment / 1241 not_entailment
    stsb = read_tsv(root / "STS-B" / "dev.tsv", get_task("stsb"))
    assert min(stsb.labels) == 0 and max(stsb.labels) == 5 and np.mean(stsb.labels) == pytest.approx(2.364, abs=1e-3)
