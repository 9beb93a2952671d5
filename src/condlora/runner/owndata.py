"""Own data files for `condlora train` / `condlora study`: CSV, TSV or JSON lines, read strictly.

Follows transformers' `run_glue.py`: a train file, an optional validation file (else the seeded 90/10 split
of the train file that GLUE runs use) and an optional test file (else the run has no test score).
Formats by extension: `.csv`, `.tsv` (CSV quoting with a tab delimiter), `.jsonl` / `.json` (JSON lines:
one object per line). A UTF-8 BOM is ignored. Text columns (one or two), when not given: `sentence1,sentence2`
if both exist, else `text`, else `sentence`, else the non-label columns when there are one or two of them.

Task type from the train file's labels: any non-integer number makes a regression task (every label must be
a number); otherwise integers or strings make a classification task whose labels are sorted (numerically or
as text) and numbered from 0 in that order. Errors name the file, the line (as an editor counts them: the
header is line 1) and the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CondLoRAError, ConfigError
from .glue import TASKS, Examples, TaskData, TaskLabels, decode_utf8, get_task, split_train

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
ROLES = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
OPTIONAL_FIELDS = ("validation_file", "test_file", "text_columns", "label_column", "metric")
DATA_FIELDS = ("train_file", *OPTIONAL_FIELDS, "data_sha256")  # left out of a GLUE run's run_dict
METRIC_FLAGS = {"accuracy": "accuracy", "f1": "f1", "mcc": "matthews", "pearson": "pearson",
                "spearman": "spearman"}
REGRESSION_METRICS = ("pearson", "spearman")
DEFAULT_LABEL = "label"
NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
QUOTING_HINT = ('fields that start with " must end with " (write "" for a quote inside); '
                "GLUE's own TSVs, whose texts hold bare quotes, load with --task and --glue-dir")


@dataclass(frozen=True)
class FileTask(TaskLabels):
    """A task read from own files; drives the model head and metrics as a `GlueTask` does.

    Attributes:
        name: the task's name (results, progress bar, study folders).
        text_cols: one or two text columns.
        label_col: the label column.
        labels: label values in id order (ints or strings); None for regression.
        metric: main metric: accuracy, f1, matthews, pearson or spearman.
        files: role (train, validation, test) -> path of each file given.
    """

    name: str
    text_cols: tuple[str, ...]
    label_col: str
    labels: tuple | None
    metric: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def extra_metrics(self) -> tuple[str, ...]:
        """Classification metrics besides accuracy: the main one, and F1 for two labels."""
        if self.is_regression:
            return ()
        return (self.metric, *(("f1",) if self.num_labels == 2 else ()))

    def record(self) -> dict[str, Any]:
        """What results.json records about the data: type, label of each id, columns, files."""
        return {"task_type": "regression" if self.is_regression else "classification",
                "labels": None if self.labels is None else list(self.labels),
                "text_columns": list(self.text_cols), "label_column": self.label_col, "data_files": self.files}


@dataclass
class Table:
    """The rows of one file: (line number, column -> value); `columns` in file order; `line` of the header."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]
    line: int = 1


# ---- reading ---------------------------------------------------------------------------------------------

def _decode(path: Path) -> str:
    if not path.is_file():
        raise CondLoRAError(f"{path}: file not found")
    text = decode_utf8(path)
    if not text.strip():
        raise CondLoRAError(f"{path} line 1: the file is empty")
    return text


def read_table(path: str | Path) -> Table:
    """Every row of a .csv, .tsv or .jsonl/.json (JSON lines) file; errors name the file, line and column."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CondLoRAError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl or .json (JSON lines)")
    text = _decode(path)
    table = _read_jsonl(path, text) if FORMATS[suffix] is None else _read_delimited(path, text, FORMATS[suffix])
    if not table.rows:
        raise CondLoRAError(f"{path} line {table.line + 1}: no data rows after the header")
    return table


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, rows, line = None, [], 1
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            where = f"line {start}" + (f" (to line {reader.line_num})" if reader.line_num > start else "")
            reason = str(e).replace("\t", "TAB")
            what = f"unreadable row ({reason})" if "limit" in reason else f"bad quoting ({reason}); {QUOTING_HINT}"
            raise CondLoRAError(f"{path} {where}: {what}") from None
        if not fields:
            continue  # a blank line
        if header is None:
            header, line = _check_header(path, start, fields), start
        else:
            rows.append((start, _row(path, start, header, fields)))
    return Table(path, header or [], rows, line)


def _check_header(path: Path, line: int, header: list[str]) -> list[str]:
    for i, name in enumerate(header):
        if name in header[:i]:
            raise CondLoRAError(f"{path} line {line}, column {name!r}: appears twice in the header")
    return header


def _row(path: Path, line: int, header: list[str], fields: list[str]) -> dict[str, str]:
    if len(fields) < len(header):
        raise CondLoRAError(f"{path} line {line}, column {header[len(fields)]!r}: missing (the row has "
                            f"{len(fields)} fields, the header {len(header)} columns)")
    if len(fields) > len(header):
        raise CondLoRAError(f"{path} line {line}, field {len(header) + 1}: the row has {len(fields)} fields, the "
                            f"header {len(header)} columns (quote fields that hold the delimiter)")
    return dict(zip(header, fields, strict=True))


def _read_jsonl(path: Path, text: str) -> Table:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        pretty = line.lstrip()[:1] == "[" or line.strip() == "{"
        hint = "; .json files are read as JSON lines (one object per line)" if pretty else ""
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CondLoRAError(f"{path} line {number}, character {e.colno}: not valid JSON ({e.msg}){hint}") from None
        if not isinstance(obj, dict):
            raise CondLoRAError(f"{path} line {number}: expected a JSON object, found {type(obj).__name__}{hint}")
        rows.append((number, obj))
    return Table(path, list(rows[0][1]), rows, rows[0][0])


# ---- columns and labels ------------------------------------------------------------------------------------

def _require(table: Table, columns: list[str]) -> None:
    for col in columns:
        if col not in table.columns:
            raise CondLoRAError(f"{table.path} line {table.line}, column {col!r}: not found; the file has "
                                f"columns {', '.join(map(repr, table.columns))}")


def text_columns(table: Table, given: list[str] | None, label_col: str) -> tuple[str, ...]:
    """The given text columns, else sentence1+sentence2, text, sentence, or the one or two non-label columns."""
    cols = table.columns
    if given:
        chosen = list(given)
    elif "sentence1" in cols and "sentence2" in cols:
        chosen = ["sentence1", "sentence2"]
    elif "text" in cols or "sentence" in cols:
        chosen = ["text" if "text" in cols else "sentence"]
    elif 1 <= len([c for c in cols if c != label_col]) <= 2:
        chosen = [c for c in cols if c != label_col]
    else:
        raise CondLoRAError(f"{table.path} line {table.line}: cannot tell the text columns among "
                            f"{', '.join(map(repr, cols))}; pass --text-columns a or a,b")
    _require(table, [*chosen, label_col])
    return tuple(chosen)


def _cell(table: Table, line: int, row: dict[str, Any], col: str) -> Any:
    if col not in row:
        raise CondLoRAError(f"{table.path} line {line}, column {col!r}: missing; the row has "
                            f"{', '.join(map(repr, row))}")
    return row[col]


def _text(table: Table, line: int, row: dict[str, Any], col: str) -> str:
    value = _cell(table, line, row, col)
    if not isinstance(value, str):
        raise CondLoRAError(f"{table.path} line {line}, column {col!r}: expected a string, found "
                            f"{json.dumps(value)}")
    return value


def _raw_label(table: Table, line: int, row: dict[str, Any], col: str) -> str | int | float:
    value = _cell(table, line, row, col)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CondLoRAError(f"{table.path} line {line}, column {col!r}: empty label")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CondLoRAError(f"{table.path} line {line}, column {col!r}: label must be a string or a number, "
                            f"found {json.dumps(value)}")
    return value


def _number(value: str | int | float) -> float | None:
    """The finite number `value` holds (a JSON number or numeric text), else None."""
    if isinstance(value, str) and not NUMBER.fullmatch(value):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _key(value: str | int | float) -> str:
    """A string label's identity (JSON numbers in a file of string labels count as their text)."""
    return value if isinstance(value, str) else str(int(value)) if float(value).is_integer() else str(value)


def infer_labels(table: Table, col: str) -> tuple | None:
    """The sorted label set of a classification train file, or None when any label is a non-integer number."""
    values = [(line, _raw_label(table, line, row, col)) for line, row in table.rows]
    numbers = [(line, v, _number(v)) for line, v in values]
    fraction = next(((line, v) for line, v, x in numbers if x is not None and not x.is_integer()), None)
    if fraction is not None:
        bad = next(((line, v) for line, v, x in numbers if x is None), None)
        if bad is not None:
            raise CondLoRAError(f"{table.path} line {bad[0]}, column {col!r}: label {bad[1]!r} is not a number, "
                                f"but line {fraction[0]} holds {fraction[1]!r}, a regression score")
        return None
    if all(x is not None for _, _, x in numbers):
        labels = tuple(sorted({int(x) for _, _, x in numbers}))
    else:
        labels = tuple(sorted({_key(v) for _, v in values}))
    if len(labels) < 2:
        raise CondLoRAError(f"{table.path} line {table.rows[0][0]}, column {col!r}: every label is {labels[0]!r}; "
                            "classification needs at least two labels")
    return labels


def _label(task: FileTask, table: Table, line: int, value: str | int | float, index: dict) -> int | float:
    x = _number(value)
    where = f"{table.path} line {line}, column {task.label_col!r}"
    if task.labels is None:
        if x is None:
            raise CondLoRAError(f"{where}: label {value!r} is not a number ({task.name} is a regression task)")
        return x
    key = (int(x) if x is not None and x.is_integer() else None) if isinstance(task.labels[0], int) else _key(value)
    if key not in index:
        raise CondLoRAError(f"{where}: label {value!r} is not one of the train file's labels "
                            f"({', '.join(map(str, task.labels))})")
    return index[key]


def to_examples(table: Table, task: FileTask) -> Examples:
    """Texts and label ids (scores for regression) of every row; errors name file, line and column."""
    _require(table, [*task.text_cols, task.label_col])
    index = {label: i for i, label in enumerate(task.labels or ())}
    texts, labels = [], []
    for line, row in table.rows:
        texts.append(tuple(_text(table, line, row, c) for c in task.text_cols))
        labels.append(_label(task, table, line, _raw_label(table, line, row, task.label_col), index))
    return Examples(texts, labels)


# ---- loading -----------------------------------------------------------------------------------------------

def _metric(flag: str | None, labels: tuple | None, path: str) -> str:
    regression = labels is None
    if flag is None:
        return "pearson" if regression else "accuracy"
    name = METRIC_FLAGS[flag]
    if (name in REGRESSION_METRICS) != regression:
        kind, fits = (("regression scores", "pearson or spearman") if regression else
                      ("classification labels", "accuracy, f1 or mcc"))
        raise CondLoRAError(f"--metric {flag} does not fit {path}, whose labels are {kind}; use {fits}")
    return name


def load_files(cfg) -> TaskData:
    """Train / validation / test sets of cfg's own files (a validated `TrainConfig` with `train_file`)."""
    train = read_table(cfg.train_file)
    label_col = cfg.label_column or DEFAULT_LABEL
    cols = text_columns(train, cfg.text_columns, label_col)
    labels = infer_labels(train, label_col)
    files = {role: getattr(cfg, flag) for role, flag in ROLES.items() if getattr(cfg, flag)}
    task = FileTask(cfg.task, cols, label_col, labels, _metric(cfg.metric, labels, cfg.train_file), files)
    full = to_examples(train, task)
    if cfg.validation_file:  # shuffled as the split is, so that --max-*-samples take random rows
        val = to_examples(read_table(cfg.validation_file), task)
        train_set, val = split_train(full, fraction=0.0)[0], split_train(val, fraction=0.0)[0]
    else:
        train_set, val = split_train(full)
    test = {"test": to_examples(read_table(cfg.test_file), task)} if cfg.test_file else {}
    return TaskData(task, train_set, val, test)


def task_record(task) -> dict[str, Any]:
    """Extra results.json entries of own-data tasks (label of each id, columns, files); {} for GLUE."""
    return task.record() if isinstance(task, FileTask) else {}


# ---- configuration -----------------------------------------------------------------------------------------

def sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(cfg) -> dict[str, str]:
    """role -> SHA-256 of every file cfg names; a missing file or unknown extension is an error."""
    out = {}
    for role, flag in ROLES.items():
        path = getattr(cfg, flag)
        if path is None:
            continue
        option = "--" + flag.replace("_", "-")
        if Path(path).suffix.lower() not in FORMATS:
            raise ConfigError(f"{option} {path}: unknown file type; use .csv, .tsv, .jsonl or .json (JSON lines)")
        if not Path(path).is_file():
            raise CondLoRAError(f"{path}: file not found ({option})")
        out[role] = sha256(path)
    return out


def _task_name(task: str | None, train_file: str) -> str:
    name = task or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(train_file).stem).strip("-._") or "data"
    if not NAME.fullmatch(name):
        raise ConfigError(f"task name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    if name.lower().replace("-", "").replace("_", "") in TASKS:
        raise ConfigError(f"task name {name!r} is a GLUE task; name the task of {train_file} with --task-name")
    return name


def configure_data(cfg) -> str:
    """TrainConfig hook: check the own-data fields, hash the files; returns the task's name."""
    if cfg.train_file is None:
        given = next((f for f in OPTIONAL_FIELDS if getattr(cfg, f) is not None), None)
        if given is not None:
            raise ConfigError(f"{given} needs train_file (own data); GLUE tasks have fixed columns and metrics")
        if cfg.task is None:
            raise ConfigError("task: give a GLUE task (--task) or own data files (--train-file)")
        cfg.data_sha256 = None
        return get_task(cfg.task).name
    if isinstance(cfg.text_columns, str):
        cfg.text_columns = [c.strip() for c in cfg.text_columns.split(",") if c.strip()]
    if cfg.text_columns is not None and not 1 <= len(cfg.text_columns) <= 2:
        raise ConfigError(f"text_columns: give one or two columns, got {cfg.text_columns!r}")
    if cfg.metric is not None and cfg.metric not in METRIC_FLAGS:
        raise ConfigError(f"metric must be one of {', '.join(METRIC_FLAGS)}; got {cfg.metric!r}")
    cfg.data_sha256 = file_hashes(cfg)
    return _task_name(cfg.task, cfg.train_file)

