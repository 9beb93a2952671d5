"""`condlora bench`: its flags, checked and handed to `condlora.bench.bench.run_all`."""

from __future__ import annotations

import argparse
import time

from ..bench.bench import ALIASES, BENCH_METHODS, DEFAULT_METHODS, describe, machine, run_all, table
from ..errors import CondLoRAError
from ..fileio import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `condlora bench`; `-h` shows each default."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--model", default="minilm",
                        help="'minilm' (offline all-MiniLM-L6-v2), 'roberta-base-random', a folder or hub id")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example (random ids)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method and repeat")
    parser.add_argument("--infer-steps", type=int, default=None,
                        help="timed steps of the infer-* methods (None: 3 x --steps; a forward is ~1/3 of a step)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all methods")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated subset of: {', '.join(BENCH_METHODS)}")
    parser.add_argument("--floor", action="store_true",
                        help="also run `floor`: the frozen forward and the activation-gradient backward down to "
                             "the adapted modules, nothing trained; the table adds `x floor`")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every method runs")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="weights and activations in fp32, or bf16")
    parser.add_argument("--dtype", dest="precision", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    parser.add_argument("--r", type=int, default=8, help="rank of every adapter")
    parser.add_argument("--alpha", type=float, default=8.0, help="adapter alpha; scaling = alpha / r")
    parser.add_argument("--target-modules", default="query,value", help="comma-separated modules to adapt")
    parser.add_argument("--targets", dest="target_modules", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what a step time is: wall seconds, or this process's CPU seconds (use with "
                             "--threads 1 on a shared machine: other processes' load does not count)")
    parser.add_argument("--trust-remote-code", action="store_true", help="let transformers run the model's own code")
    parser.add_argument("--compile", action="store_true",
                        help="wrap every method's model in torch.compile (needs a C++ compiler on CPU)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def check_args(args: argparse.Namespace) -> list[str]:
    """The list of methods to run; a clear error for a bad argument."""
    for name in ("batch_size", "max_length", "steps", "repeats", "r"):
        if getattr(args, name) <= 0:
            raise CondLoRAError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.infer_steps is not None and args.infer_steps <= 0:
        raise CondLoRAError(f"--infer-steps must be positive, got {args.infer_steps}")
    if args.warmup < 0 or args.threads < 0:
        raise CondLoRAError("--warmup and --threads must not be negative")
    methods = [ALIASES.get(m.strip(), m.strip()) for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in BENCH_METHODS]
    if unknown or not methods:
        raise CondLoRAError(f"--methods: unknown method {unknown[0] if unknown else '(none)'!r}; "
                            f"choose from {', '.join(BENCH_METHODS)}")
    if len(set(methods)) != len(methods):
        raise CondLoRAError("--methods lists a method twice")
    if getattr(args, "floor", False) and "floor" not in methods:
        methods.insert(0, "floor")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CondLoRAError("--device cuda: no CUDA device is available to this torch "
                                f"({torch.__version__}); use --device cpu")
    return methods


def main(args: argparse.Namespace) -> int:
    """Run the benchmark, print the header and the table of measurements and ratios, write JSON if asked."""
    methods = check_args(args)
    t0 = time.time()
    info = machine(args.device)
    print(describe(info))
    print(f"model={args.model} batch={args.batch_size} length={args.max_length} steps={args.steps} "
          f"warmup={args.warmup} repeats={args.repeats} device={args.device} precision={args.precision} "
          f"r={args.r} alpha={args.alpha} target_modules={args.target_modules} "
          f"threads={args.threads or 'default'} clock={args.clock}"
          f"{' compiled (torch.compile)' if args.compile else ''}; "
          "step = median over repeats of per-repeat median; "
          "mem = first-step peak of live tensors above the model", flush=True)
    results = run_all(methods, args)
    print(table(results))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "quiet") and not callable(v)}
        write_json(args.json, {"settings": {**settings, "methods": ",".join(methods)}, "machine": info,
                               "results": results, "wall_s": time.time() - t0})
    return 0
