"""`condlora study`: its flags, mapped onto `StudySettings` and `run_study`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import COND_FORMS
from ..errors import ConfigError
from ..runner.names import USER_METHODS, stored_method, user_method
from ..study.search import LR_RANGE
from ..study.settings import PASS_THROUGH, PRESETS, SEEDS_HELP, TASKS, StudySettings
from ..study.study import run_study
from . import owndata
from .train import positive_int

DEFAULT_TASKS = "rte,mrpc,stsb,cola"
EPILOG = """examples:
  condlora study --tasks rte,mrpc,stsb,cola --methods lora,condlora --seeds 3 --lr-preset paper \\
      --model minilm --output-dir runs/study
  (same flags) --seeds 5          # add seeds 3 and 4: seeds 0-2 are reused, the tables use all five
  (same flags) --seeds 5-9        # seeds 5..9 only (e.g. on a second machine); the tables use every seed found
  condlora study --status --output-dir runs/study   # one line: trainings done/planned, current runs, ETA
  condlora study --status --watch 30 --output-dir runs/study   # that line every 30 s until the workers finish
  condlora study --status --report partial.md --output-dir runs/study   # + what has finished so far, as markdown
  condlora study --lr-search 20 --seeds 5 --output-dir runs/study        # resumable; re-run to continue
  condlora study --lr-grid 5e-4,1e-3,2e-3,5e-3 --output-dir runs/study   # every LR; seed 0 reuses its trial

several workers on one search (processes or machines; same flags everywhere):
  condlora study --lr-search 20 --storage postgresql://u:p@host/db --search-only --output-dir DIR   # on each
  condlora study --lr-search 20 --storage postgresql://u:p@host/db --output-dir DIR   # then seeds + tables
Together the workers run exactly 20 completed trials per task x method; a killed worker's trial is failed
after 3 heartbeats (3 min) and retried with the same LR."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `condlora study`."""
    p.epilog = EPILOG
    p.add_argument("--tasks", help=f"comma-separated GLUE tasks ({', '.join(TASKS)}; default {DEFAULT_TASKS}); "
                   "or own data: --train-file")
    p.add_argument("--methods", default="lora,condlora",
                   help=f"comma-separated methods ({', '.join(USER_METHODS)}; condlora is the general form, "
                        "condlora-paper the paper's); Δ and p-values compare with the first. "
                        "lora-r1, lora-r2, vera, vera-r1024, fourierft: rows of a tiny budget, each at its own size "
                        "(see condlora train --method)")
    p.add_argument("--seeds", default="3", metavar="N|LIST",
                   help=f"seeds per task x method at the chosen LR: {SEEDS_HELP} (default 3)")
    p.add_argument("--output-dir", required=True, help="study folder (runs, search, tables, study.json)")
    p.add_argument("--status", action="store_true",
                   help="only print the progress of the study in --output-dir (trainings done/planned, what each "
                        "running worker trains, ETA from the mean wall time of finished runs) and exit")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="with --status: print that line every SECONDS until the running workers have finished")
    p.add_argument("--report", metavar="FILE.md",
                   help="with --status: also write a markdown report of every finished training so far (runs, LR "
                        "search per task x method, seed means at the chosen LR); with --watch, rewritten every tick")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr-search", type=int, metavar="N_TRIALS",
                    help="Optuna TPE search over LR in --lr-range (log), N_TRIALS per task x method")
    lr.add_argument("--lr-grid", metavar="LR,LR,...|auto",
                    help="try every LR of this list per task x method (Optuna study of enqueued trials); "
                         "the best on validation is used. Where it sits at an edge of the list, the grid is "
                         "extended past that edge by the edge's own step (e.g. 1e-3,2e-3 -> 5e-4), two LRs at most. "
                         "'auto': each method its own grid (1e-3,2e-3,5e-3; vera*: 4e-3,1e-2,2.5e-2; "
                         "fourierft: 2e-2,5e-2,1.25e-1, where their papers work)")
    lr.add_argument("--lr-preset", choices=sorted(PRESETS),
                    help="learning rates hard-coded in the authors' scripts (LoRA and CondLoRA only)")
    p.add_argument("--lr", type=float, help="fixed LR for every run, or the fallback where the preset has none")
    p.add_argument("--lr-range", default=",".join(map(str, LR_RANGE)), metavar="LO,HI",
                   help="range of the TPE search (default %(default)s; CondLoRA may want more)")
    p.add_argument("--storage", help="Optuna storage URL shared by several workers, e.g. postgresql://... "
                   "(default: sqlite under OUTPUT_DIR/search)")
    p.add_argument("--search-seed", type=int, default=0, help="training seed of search runs and TPE seed (default 0)")
    p.add_argument("--search-only", action="store_true",
                   help="stop after the LR search (for extra workers sharing --storage)")
    p.add_argument("--tables-only", action="store_true",
                   help="write the tables and figures from the runs finished so far (at the LRs study.json records) "
                        "and train nothing; safe while the study's workers run")
    p.add_argument("--skip-unlearned", action="store_true",
                   help="per task, train the first method (the reference) first, and the other methods only "
                        "where it clearly beat the trivial baseline (Table 2's sanity gate); a task it did not "
                        "learn is reported as not learned at this budget")
    p.add_argument("--share", action="store_true",
                   help="for several workers started with the same flags on one machine: each task x method pair "
                        "(its LR search and seeds) is trained by the first worker free to take it, so no worker "
                        "idles while another has a long task left; every worker ends with the whole study's tables")
    g = p.add_argument_group("passed to every run (condlora train; default: train's own)")
    g.add_argument("--model", help="base model (alias, local folder or hub id)")
    g.add_argument("--glue-dir", help="folder with GLUE TSVs (default: $CONDLORA_GLUE_DIR)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--max-length", type=int)
    g.add_argument("--max-train-samples", type=int)
    g.add_argument("--max-eval-samples", type=int)
    g.add_argument("--r", type=int)
    g.add_argument("--alpha", type=float)
    g.add_argument("--head-lr", type=float, help="the head's own LR for every row (default: each method's own, "
                   "see condlora train --head-lr)")
    g.add_argument("--target-modules", help="comma-separated, e.g. query,value")
    g.add_argument("--cond-form", choices=COND_FORMS, help="CondLoRA's form: auto (default), paper or general")
    g.add_argument("--head", choices=("dense", "linear"),
                   help="classification head, dense or linear (see condlora train --head)")
    g.add_argument("--patience", type=int, help="early stopping patience (see condlora train --patience)")
    g.add_argument("--group-by-length", action="store_true", help="see condlora train --group-by-length")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="see condlora train --precision")
    g.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")
    g.add_argument("--save-every", type=positive_int, metavar="STEPS",
                   help="a checkpoint every STEPS steps too, for long runs (see condlora train --save-every)")
    owndata.add_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--run-progress", action="store_true", help="show each run's own progress bar too")


def settings_from_args(args: argparse.Namespace) -> StudySettings:
    """StudySettings from parsed CLI arguments (pass-through flags only when given)."""
    run_args = {k: getattr(args, k) for k in PASS_THROUGH if getattr(args, k, None) not in (None, False)}
    if "target_modules" in run_args:
        run_args["target_modules"] = [m.strip() for m in run_args["target_modules"].split(",") if m.strip()]
    owndata.check(args, "tasks")  # own data: one task, named --task-name (default: the train file's name)
    run_args.update(owndata.run_args(args))
    tasks = args.task_name if args.train_file else args.tasks or DEFAULT_TASKS
    return StudySettings(tasks=tasks, methods=stored_methods(args.methods),
                         output_dir=args.output_dir, seeds=args.seeds,
                         lr_search=args.lr_search, lr_grid=args.lr_grid, lr_range=args.lr_range,
                         lr_preset=args.lr_preset, lr=args.lr, storage=args.storage,
                         search_seed=args.search_seed, search_only=args.search_only, tables_only=args.tables_only,
                         quiet=args.quiet,
                         run_progress=args.run_progress, skip_unlearned=args.skip_unlearned, share=args.share,
                         run_args=run_args)


def stored_methods(text: str) -> str:
    """--methods in the user's names -> the stored names of `runner.names` (condlora -> condlora-general)."""
    given = [m.strip() for m in text.split(",") if m.strip()]
    stored = [stored_method(m) for m in given]
    if len(set(stored)) < len(stored):
        raise ConfigError(f"--methods {text}: condlora and condlora-general are the same method (the general "
                          "form); the paper's form is condlora-paper")
    return ",".join(stored)


def status(args: argparse.Namespace) -> int:
    """--status: print the progress line (every --watch seconds), writing the --report file with each line."""
    from ..study.progress import status_line, watch
    from ..study.report import check_target, write_report

    if args.watch is not None and args.watch <= 0:
        raise ConfigError(f"--watch must be > 0 seconds, got {args.watch}")
    if args.report is not None:
        check_target(args.output_dir, args.report)

    def show(line: str) -> None:
        print(line, flush=True)
        if args.report is not None:
            write_report(args.output_dir, args.report, line)

    if args.watch is None:
        show(status_line(args.output_dir))
    else:
        watch(args.output_dir, args.watch, show)
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the study and print the tables (or, with --status, print its progress)."""
    if args.status or args.watch is not None:
        return status(args)
    if args.report is not None:
        raise ConfigError("--report needs --status (it reports on a study, it does not run one)")
    s = settings_from_args(args)
    record = run_study(s)
    if s.search_only:
        for t, by_m in record["lr"].items():
            print(", ".join(f"{t}/{user_method(m)}: lr={v['lr']:.4g} ({v['source']})" for m, v in by_m.items()))
        return 0
    print(record["tables"])
    first = f"{Path(s.output_dir)}/" if s.tables_only else f"{Path(s.output_dir) / 'study.json'}, "
    print(f"wrote {first}table2.md/.csv, {', '.join(record['figures'])}, "
          "table4.md/.csv" + (", table3.md/.csv/.png" if "Table 3:" in record["tables"] else "")
          + (", figure1.md/.csv and figure1_*.png" if "Figure 1 (" in record["tables"] else ""))
    return 0
