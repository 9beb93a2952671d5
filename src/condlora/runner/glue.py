"""GLUE data: the task table, a strict TSV reader, the paper's 90/10 split, tokenization and batching.

Local files follow the original `glue_data/` layout (`TASK/train.tsv`, `TASK/dev.tsv`; MNLI
`dev_matched.tsv` + `dev_mismatched.tsv`). Rows are split on tabs with no quote handling (texts hold `"`),
files are read as UTF-8 with an optional BOM (MRPC). Without a GLUE folder the task comes from the
Hugging Face hub (`nyu-mll/glue`) through the optional `datasets` package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CondLoRAError
from .names import GLUE_DIR_ENV

SPLIT_SEED = 1
VAL_FRACTION = 0.1
HUB_DATASET = "nyu-mll/glue"
SCORE_RANGE = (0.0, 5.0)  # STS-B similarity scores


class TaskLabels:
    """`num_labels` and `is_regression` of a task from its `labels` (None for regression)."""

    labels: tuple | None

    @property
    def num_labels(self) -> int:
        """Classifier outputs: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        """True when the labels are scores (STS-B, own float labels)."""
        return self.labels is None


@dataclass(frozen=True)
class GlueTask(TaskLabels):
    """One GLUE task: where its files are, which columns hold texts and label, its labels and metric.

    Attributes:
        name: canonical lower-case name ("sst2").
        folder: folder in the GLUE layout ("SST-2").
        text_cols: header names of the text columns (or positions, for files without a header).
        label_col: header name (or position) of the label column.
        labels: label strings in id order (the hub's order); None for regression (STS-B).
        metric: main metric: "accuracy", "matthews" or "pearson".
        hub_text_cols: text column names in the hub's `nyu-mll/glue` dataset.
        test_files: part name -> dev file name; several parts are concatenated into one test set.
        header: whether the files start with a header row.
        n_columns: columns per row of files without a header (those with one have as many as the header).
    """

    name: str
    folder: str
    text_cols: tuple
    label_col: str | int
    labels: tuple[str, ...] | None
    metric: str
    hub_text_cols: tuple[str, ...]
    test_files: dict[str, str] = field(default_factory=lambda: {"dev": "dev.tsv"})
    header: bool = True
    n_columns: int = 0


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", "CoLA", (3,), 1, BINARY, "matthews", ("sentence",), header=False, n_columns=4),
    GlueTask("sst2", "SST-2", ("sentence",), "label", BINARY, "accuracy", ("sentence",)),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", BINARY, "accuracy", ("sentence1", "sentence2")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, "pearson", ("sentence1", "sentence2")),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", BINARY, "accuracy",
             ("question1", "question2")),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             "accuracy", ("premise", "hypothesis"),
             test_files={"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"}),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", NLI2, "accuracy", ("question", "sentence")),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", NLI2, "accuracy", ("sentence1", "sentence2")),
)}


def get_task(name: str) -> GlueTask:
    """The task called `name`: case-insensitive, GLUE folder names (SST-2, STS-B) accepted."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise CondLoRAError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class Examples:
    """Texts (one tuple of 1 or 2 strings per example) and labels (int ids, or floats for STS-B)."""

    texts: list[tuple[str, ...]]
    labels: list

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Sequence[int]) -> Examples:
        """The examples at `indices`, in that order."""
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])

    @staticmethod
    def concat(parts: Sequence[Examples]) -> Examples:
        """All examples of `parts`, one after the other."""
        return Examples([t for p in parts for t in p.texts], [y for p in parts for y in p.labels])


@dataclass
class TaskData:
    """A task's three sets: train (GLUE: 90% of train), validation (GLUE: the other 10%), test (per part).

    `load_glue` fills it from a GLUE task (test: the official dev sets), `owndata.load_files` from own files.
    """

    task: GlueTask
    train: Examples
    val: Examples
    test_parts: dict[str, Examples]

    @property
    def test(self) -> Examples:
        """Every test part together (MNLI: matched + mismatched)."""
        return Examples.concat(list(self.test_parts.values()))


def decode_utf8(path: Path) -> str:
    """The text of `path` (a UTF-8 BOM dropped); a clear error naming the line of an invalid byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CondLoRAError(f"{path} line {line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _decode_lines(path: Path) -> list[str]:
    return [line[:-1] if line.endswith("\r") else line for line in decode_utf8(path).split("\n")]


def _parse_label(task: GlueTask, value: str, where: str) -> int | float:
    if task.labels is None:
        try:
            score = float(value)
        except ValueError:
            raise CondLoRAError(f"{where}: score {value!r} is not a number") from None
        if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
            raise CondLoRAError(f"{where}: score {value!r} is outside {task.name}'s range "
                                f"{SCORE_RANGE[0]:g} to {SCORE_RANGE[1]:g}")
        return score
    if value not in task.labels:
        raise CondLoRAError(f"{where}: label {value!r} is not one of {', '.join(task.labels)} ({task.name})")
    return task.labels.index(value)


def _column_positions(task: GlueTask, header: list[str], path: Path) -> tuple[list[int], int]:
    missing = [c for c in (*task.text_cols, task.label_col) if c not in header]
    if missing:
        raise CondLoRAError(f"{path} line 1: header lacks column(s) {missing} for task {task.name}; "
                            f"found {header}")
    return [header.index(c) for c in task.text_cols], header.index(task.label_col)


def read_tsv(path: str | os.PathLike, task: GlueTask) -> Examples:
    """Read one GLUE TSV file of `task`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CondLoRAError(f"{path} not found (expected the GLUE layout {task.folder}/train.tsv, dev.tsv)")
    lines = _decode_lines(path)
    start = 0
    if task.header:
        header = lines[0].split("\t") if lines and lines[0] else []
        if not header:
            raise CondLoRAError(f"{path} is empty")
        text_pos, label_pos = _column_positions(task, header, path)
        n_cols, start = len(header), 1
    else:
        text_pos, label_pos, n_cols = list(task.text_cols), int(task.label_col), task.n_columns
    texts, labels = [], []
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line:
            continue
        cols = line.split("\t")
        where = f"{path} line {number}"
        if len(cols) != n_cols:
            raise CondLoRAError(f"{where}: expected {n_cols} tab-separated columns, found {len(cols)}")
        texts.append(tuple(cols[i] for i in text_pos))
        labels.append(_parse_label(task, cols[label_pos], where))
    if not labels:
        raise CondLoRAError(f"{path} is empty (no data rows)")
    return Examples(texts, labels)


def split_train(examples: Examples, seed: int = SPLIT_SEED,
                fraction: float = VAL_FRACTION) -> tuple[Examples, Examples]:
    """(train, validation): shuffle with `seed` as `datasets.Dataset.shuffle` does, the first 10% validate."""
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = round(len(examples) * fraction)
    return examples.select(order[n_val:].tolist()), examples.select(order[:n_val].tolist())


def _hub_examples(split, task: GlueTask) -> Examples:
    texts = list(zip(*(split[c] for c in task.hub_text_cols), strict=True))
    labels = [float(y) for y in split["label"]] if task.is_regression else [int(y) for y in split["label"]]
    return Examples(texts, labels)


def load_hub(task: GlueTask) -> tuple[Examples, dict[str, Examples]]:
    """Train and test parts of `task` from the hub's `nyu-mll/glue` (needs the `data` extra)."""
    try:
        import datasets
    except ImportError:
        raise CondLoRAError(
            f"no GLUE folder given (--glue-dir or ${GLUE_DIR_ENV}) and the `datasets` package is missing "
            "for the hub fallback: pip install 'condlora[data]', or point --glue-dir at a glue_data folder"
        ) from None
    try:
        ds = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as e:  # offline, unknown config, ...: one clear line
        raise CondLoRAError(f"could not load {HUB_DATASET}/{task.name} from the hub: {type(e).__name__}: "
                            f"{str(e)[:200]}; use --glue-dir for local files") from None
    parts = {"dev": "validation"} if len(task.test_files) == 1 else {p: f"validation_{p}" for p in task.test_files}
    return _hub_examples(ds["train"], task), {p: _hub_examples(ds[s], task) for p, s in parts.items()}


def load_glue(task_name: str, glue_dir: str | os.PathLike | None = None) -> TaskData:
    """The paper's train / validation / test sets of a GLUE task, from `glue_dir` (or $CONDLORA_GLUE_DIR)
    when given, else from the hub."""
    task = get_task(task_name)
    glue_dir = glue_dir or os.environ.get(GLUE_DIR_ENV) or None
    if glue_dir is None:
        full_train, test_parts = load_hub(task)
    else:
        root = Path(glue_dir)
        if not root.is_dir():
            raise CondLoRAError(f"GLUE folder {root} does not exist")
        folder = next((root / n for n in (task.folder, task.name, task.name.upper()) if (root / n).is_dir()),
                      root / task.folder)
        full_train = read_tsv(folder / "train.tsv", task)
        test_parts = {part: read_tsv(folder / name, task) for part, name in task.test_files.items()}
    train, val = split_train(full_train)
    return TaskData(task, train, val, test_parts)


def subsample(examples: Examples, n: int | None, seed: int = SPLIT_SEED) -> Examples:
    """At most `n` examples: a seeded random subset kept in file order (all when `n` is None)."""
    if n is None or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return examples.select(keep.tolist())


class Encoded:
    """Tokenized examples stored flat (NumPy, offsets per example); `batch(indices)` pads a batch."""

    CHUNK = 10_000

    def __init__(self, examples: Examples, tokenizer, max_length: int, pad_to_max_length: bool = False) -> None:
        if tokenizer.pad_token_id is None:
            raise CondLoRAError(f"tokenizer {type(tokenizer).__name__} has no padding token; set one first")
        self.flat: dict[str, list[np.ndarray]] = {}
        lengths = []
        for start in range(0, len(examples), self.CHUNK):
            texts = examples.texts[start:start + self.CHUNK]
            enc = tokenizer(*[list(c) for c in zip(*texts, strict=True)], truncation=True, max_length=max_length)
            for key, rows in enc.items():
                self.flat.setdefault(key, []).append(np.fromiter((t for r in rows for t in r), dtype=np.int64))
            lengths.extend(len(r) for r in enc["input_ids"])
        self.flat = {k: np.concatenate(v) for k, v in self.flat.items()}
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        dtype = torch.float32 if examples.labels and isinstance(examples.labels[0], float) else torch.long
        self.labels = torch.tensor(examples.labels, dtype=dtype)
        self.pad_values = {"input_ids": tokenizer.pad_token_id,
                           "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.max_length = max_length if pad_to_max_length else None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A padded batch (to its longest example, or to max_length) with its `labels`."""
        indices = list(indices)
        width = self.max_length or int(self.lengths[indices].max())
        out = {}
        for key, flat in self.flat.items():
            arr = np.full((len(indices), width), self.pad_values.get(key, 0), dtype=np.int64)
            for row, i in enumerate(indices):
                n = int(self.lengths[i])
                values = flat[self.offsets[i]:self.offsets[i] + n]
                if self.left:
                    arr[row, width - n:] = values
                else:
                    arr[row, :n] = values
            out[key] = torch.from_numpy(arr)
        out["labels"] = self.labels[indices]
        return out
