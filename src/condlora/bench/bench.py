"""`condlora bench`: training and inference speed and memory, side by side with real PEFT LoRA.

Every method runs in its own worker process (`condlora.bench.worker`), all started once and kept alive.
Repeats are interleaved: in each repeat every worker in turn runs its warmup and timed steps, in an order
rotated from repeat to repeat, so machine noise hits every method alike; only one worker computes at a
time. A method's step time is the median over repeats of its per-repeat median. Peak memory is each
worker's first-step peak of live tensors (activations, gradients, optimizer state, temporaries); the
JSON adds its resident-set peak (see `condlora.bench.worker`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from ..errors import CondLoRAError

# real PEFT rows at their own sizes (runner.method_defaults): trained, and merged for inference
PEFT_ROWS = ("lora-r1", "lora-r2", "vera", "vera-r1024", "fourierft")
TRAIN_METHODS = ("floor", "base", "lora", "native-lora", "condlora", "condlora-frozen-a", "native-lora-frozen-a",
                 "full", *PEFT_ROWS)
INFER_METHODS = ("infer-base", "infer-merged", "infer-condlora",  # a merged LoRA is a merged LoRA at any rank
                 *(f"infer-merged-{m}" for m in PEFT_ROWS if not m.startswith("lora")))
BENCH_METHODS = TRAIN_METHODS + INFER_METHODS  # every method `condlora bench` measures
# all by default but `floor`, which runs on request (`--floor`): the frozen forward and activation-gradient
# backward, nothing trained
DEFAULT_METHODS = tuple(m for m in BENCH_METHODS if m != "floor")
ANSWER_MARK = "@@ "  # starts each answer line of a worker, so stray library output is never taken for one
# old method names, still accepted
ALIASES = {"peft-lora": "lora"}


def worker_command(method: str, args: argparse.Namespace) -> list[str]:
    """The command line of the `condlora.bench.worker` process for `method`."""
    cmd = [sys.executable, "-m", "condlora.bench.worker", "--method", method, "--model", args.model,
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--device", args.device, "--precision", args.precision, "--r", str(args.r), "--alpha", str(args.alpha),
           "--target-modules", args.target_modules, "--threads", str(args.threads)]
    return cmd + ["--trust-remote-code"] * bool(args.trust_remote_code) + ["--compile"] * bool(args.compile)


class Worker:
    """A `condlora.bench.worker` process for one method."""

    def __init__(self, method: str, args: argparse.Namespace) -> None:
        self.method = method
        cmd = worker_command(method, args)
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env)
        self.info: dict = {}

    def receive(self) -> dict:
        """The worker's next answer; a clear error with its stderr tail if it died."""
        while line := self.proc.stdout.readline():
            if line.startswith(ANSWER_MARK):
                return json.loads(line[len(ANSWER_MARK):])
        self.proc.wait()
        self.stderr.seek(0)
        tail = [ln for ln in self.stderr.read().strip().splitlines() if not ln.startswith("USDT")][-3:]
        code = self.proc.returncode
        hint = " (killed: out of memory? try fewer --methods or a smaller batch)" if code == -9 else ""
        raise CondLoRAError(f"benchmark worker for {self.method} exited ({code}){hint}: " + " | ".join(tail))

    def ask(self, **cmd) -> dict:
        """Send one command and wait for its answer."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self) -> None:
        """Ask the worker to quit; kill it if it does not."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.stderr.close()


def run_all(methods: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Start the workers, run the interleaved repeats, collect times and memory per method."""
    from tqdm import tqdm

    workers = {m: Worker(m, args) for m in methods}
    try:
        start_all(workers, args.quiet)
        runs: dict[str, list[float]] = {m: [] for m in methods}
        times: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": []} for m in methods}
        bar = tqdm(total=args.repeats * len(methods), disable=args.quiet, desc="bench", file=sys.stderr)
        for rep in range(args.repeats):
            k = rep % len(methods)
            for m in methods[k:] + methods[:k]:
                bar.set_postfix_str(m)
                steps = (args.infer_steps or 3 * args.steps) if m.startswith("infer-") else args.steps
                out = workers[m].ask(cmd="run", steps=steps, warmup=args.warmup)
                runs[m].append(out[f"median_{args.clock}"])
                times[m]["wall"].extend(out["wall"])
                times[m]["cpu"].extend(out["cpu"])
                bar.update()
        bar.close()
        return {m: summarize(runs[m], times[m], workers[m].info, workers[m].ask(cmd="mem"), args.batch_size)
                for m in methods}
    finally:
        for w in workers.values():
            w.close()


def start_all(workers: dict[str, Worker], quiet: bool) -> None:
    """Wait until every worker has built its model and run its first step, printing each as it is ready."""
    t0 = time.perf_counter()
    for i, w in enumerate(workers.values(), 1):
        w.info = w.receive()
        if "error" in w.info:
            raise CondLoRAError(f"{w.method}: {w.info['error']}")
        if not quiet:
            print(f"bench: {w.method} built, first step done ({i}/{len(workers)}, "
                  f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def summarize(run_medians: list[float], times: dict[str, list[float]], info: dict, mem: dict,
              batch: int) -> dict:
    """One method's numbers: median step seconds, examples/s, spread, memory, trainable parameters."""
    step = statistics.median(run_medians)
    return {"step_s": step, "examples_per_s": batch / step, "run_medians_s": run_medians,
            "median_wall_s": statistics.median(times["wall"]), "median_cpu_s": statistics.median(times["cpu"]),
            "trainable": info.get("trainable", 0), "threads": info.get("threads"),
            "step_mb": info["step_mb"], **mem}


def ratio(results: dict, method: str, ref: str, key: str) -> float | None:
    """results[method][key] / results[ref][key], or None when either is missing."""
    if method not in results or ref not in results or not results[ref][key]:
        return None
    return results[method][key] / results[ref][key]


def table(results: dict) -> str:
    """The one results table: training rows, then inference rows, with ratios (`x floor` when it ran)."""
    floor = "floor" in results
    head = (f"{'method':<18} {'step ms':>8} {'ex/s':>7} {'x peft':>7} {'x base':>7} " + "x floor " * floor
            + f"{'mem MiB':>8} {'mem x peft':>10} {'RSS MiB':>8} {'trainable':>10}")
    lines = [head, "-" * len(head)]
    for m, r in results.items():
        infer = m.startswith("infer-")
        ref_base = "infer-base" if infer else "base"
        vs_peft = None if infer else ratio(results, m, "lora", "step_s")
        mem_peft = None if infer else ratio(results, m, "lora", "step_mb")
        vs_floor = f"{fmt(None if infer else ratio(results, m, 'floor', 'step_s')):>7} " if floor else ""
        proc_mb = r.get("rss_peak_mb", r.get("cuda_max_allocated_mb", float("nan")))
        lines.append(f"{m:<18} {r['step_s'] * 1e3:>8.1f} {r['examples_per_s']:>7.1f} {fmt(vs_peft):>7} "
                     f"{fmt(ratio(results, m, ref_base, 'step_s')):>7} {vs_floor}{r['step_mb']:>8.0f} "
                     f"{fmt(mem_peft):>10} {proc_mb:>8.0f} {r['trainable']:>10,}")
    return "\n".join(lines)


def fmt(x: float | None) -> str:
    """A ratio to 3 decimals, or '-'."""
    return "-" if x is None else f"{x:.3f}"


def machine(device: str = "cpu") -> dict:
    """Where the numbers were taken: versions, CPU, and on `device` "cuda" the GPU and its CUDA."""
    import torch

    from ..runner.rundir import cpu_name, versions

    info = {**versions(), "torch": torch.__version__, "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "processor": platform.processor()}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def describe(info: dict) -> str:
    """`machine()` as one header line."""
    where = (f"{info['gpu']} ({info['gpu_memory_gib']} GiB, compute capability {info['gpu_capability']}), "
             f"CUDA {info['cuda']}, cuDNN {info['cudnn']}, host CPU {info['cpu']}" if "gpu" in info
             else f"CPU {info['cpu']} ({info['cpu_count']} logical cores)")
    return (f"machine: {where}; torch {info['torch']}, transformers {info.get('transformers')}, "
            f"peft {info.get('peft', '(not installed)')}, Python {info['python']}")
