"""Own-data flags shared by `condlora train` and `condlora study` (`--train-file` etc.; see runner/owndata.py)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError

FLAGS = ("train_file", "validation_file", "test_file", "text_columns", "label_column", "metric")
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
HELP = """instead of a GLUE task, as transformers' run_glue.py takes it:
  files: .csv, .tsv (CSV quoting, tab-separated) or .jsonl/.json (JSON lines), UTF-8, first row = header
  text columns (default): sentence1,sentence2 if both exist, else text, else sentence, else the one or two
      columns besides the label
  labels: any non-integer number -> regression (metric pearson); else integers or strings -> classification
      (metric accuracy; labels sorted, numbered from 0 in that order, listed in results.json)"""


def _columns(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not 1 <= len(names) <= 2:
        raise argparse.ArgumentTypeError(f"expected one or two comma-separated column names, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The own-data flags, in a group of their own."""
    g = p.add_argument_group("own data", HELP)
    g.add_argument("--train-file", help="training data (.csv, .tsv, .jsonl or .json lines)")
    g.add_argument("--validation-file", help="validation data for model selection (default: a seeded 10%% of "
                   "--train-file, as GLUE runs split theirs)")
    g.add_argument("--test-file", help="test data, scored once with the best model (default: no test score; "
                   "condlora study needs one)")
    g.add_argument("--text-columns", type=_columns, metavar="A[,B]", help="one or two text columns")
    g.add_argument("--label-column", metavar="NAME", help="label column (default: label)")
    g.add_argument("--metric", choices=METRICS, help="main metric: accuracy, f1, mcc (classification), pearson, "
                   "spearman (regression); default: accuracy, or pearson for regression")
    g.add_argument("--task-name", help="name of the own-data task (default: the train file's name)")


def check(args: argparse.Namespace, glue_flag: str) -> None:
    """Refuse own-data flags without --train-file, and --train-file together with the GLUE flag `glue_flag`."""
    given = [f for f in (*FLAGS[1:], "task_name") if getattr(args, f) is not None]
    option = "--" + glue_flag.replace("_", "-")
    if args.train_file is None and given:
        raise ConfigError(f"--{given[0].replace('_', '-')} needs --train-file (own data)")
    if args.train_file is not None and getattr(args, glue_flag) is not None:
        raise ConfigError(f"{option} (GLUE) and --train-file (own data) exclude each other; give one "
                          "(name own data with --task-name)")


def train_task(args: argparse.Namespace) -> str | None:
    """`condlora train`'s task: the GLUE --task, or the own data's --task-name (None: the train file's name)."""
    check(args, "task")
    return args.task_name if args.train_file is not None else args.task


def run_args(args: argparse.Namespace) -> dict:
    """The own-data flags that were given, as TrainConfig fields."""
    return {f: getattr(args, f) for f in FLAGS if getattr(args, f) is not None}
