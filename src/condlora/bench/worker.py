"""One benchmark method in its own process, driven by `condlora bench` over stdin/stdout.

A fresh process per method keeps its memory its own. Memory is measured twice: the peak of live torch
tensors during the first step (`first_step_peak_mb`, the number the table shows), and the process's
resident high-water mark above its post-build level (Linux `/proc/self/clear_refs` resets it), which
also counts what the C allocator keeps cached.
The parent sends one JSON command per line (`run`, `mem`, `quit`); the worker answers one line each,
prefixed with `bench.ANSWER_MARK` (`@@ `) so that stray library output on stdout cannot be mistaken for an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from ..errors import CondLoRAError, require
from .bench import ANSWER_MARK, BENCH_METHODS, PEFT_ROWS, TRAIN_METHODS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def apply_method(model: nn.Module, method: str, r: int, alpha: float, targets: list[str]) -> nn.Module:
    """`model` prepared for `method`: which parameters train, which adapter runs (the head always trains)."""
    from .. import AdapterConfig, apply_adapter, merge_and_unload
    from ..runner.methods import freeze_all_but_head

    if method == "full":
        return model.requires_grad_(True)
    if method == "floor":
        return add_floor_taps(model, targets)
    heads = freeze_all_but_head(model)
    if method in ("base", "infer-base"):
        # the floor: gradients flow into every layer's input (as below any adapter), only the head trains
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
        return model
    row = method.removeprefix("infer-merged-")
    if row in PEFT_ROWS:
        return _peft_row(model, row, targets, merged=method != row)
    if method == "lora":  # the real peft library: its plain LoRA model, the head trained in place (no copy)
        require("peft", "bench method 'lora'", "peft")
        from peft import LoraConfig

        from ..runner.peft_methods import peft_model

        model = peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets),
                           targets)
        for name, p in model.named_parameters():
            if any(f".{h}." in f".{name}" for h in heads):
                p.requires_grad_(True)
        return model
    kind = "lora" if method.startswith("native-lora") else "condlora"
    cfg = AdapterConfig(method=kind, r=r, alpha=alpha, target_modules=targets, cond_form="auto",  # as `condlora train`
                        train_a=not method.endswith("frozen-a"), modules_to_save=heads)
    model = apply_adapter(model, cfg)
    if method.startswith("infer-"):
        with torch.no_grad():  # a trained-looking adapter: non-zero Θ_B so ΔW is real work
            for gen in model.condlora_generators.values():
                gen.theta_B.normal_(0.0, 1.0, generator=torch.Generator(gen.theta_B.device).manual_seed(1))
        if method == "infer-merged":
            model = merge_and_unload(model)
    return model


def _peft_row(model: nn.Module, method: str, targets: list[str], merged: bool) -> nn.Module:
    """A PEFT row at its own sizes with the linear head; `merged`: a trained-looking adapter merged into W."""
    from ..runner.methods import MethodSetup, setup_method
    from ..runner.peft_methods import merge_peft

    model = setup_method(model, MethodSetup.row(method, targets, head="linear"))
    if not merged:
        return model
    with torch.no_grad():  # non-zero vectors / spectrum so the merge is real work
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype))
    return merge_peft(model)


class _Tap(torch.autograd.Function):
    """Identity on an adapted module's output whose backward takes the output's gradient and drops it."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None]:
        return None, None


def add_floor_taps(model: nn.Module, targets: list[str]) -> nn.Module:
    """The floor: everything frozen, yet the loss's gradient reaches every target module's output.

    That is the least any adapter step computes: the frozen forward and the activation gradients down
    to the lowest adapted module (not below it, and no weight gradient). Each target's output passes
    through `_Tap`, tied to `floor_anchor`, an empty parameter (so it moves with the model) that requires
    grad and gets none; no kernel is added.
    """
    from ..inject import name_matches

    model.requires_grad_(False)
    model.register_parameter("floor_anchor", nn.Parameter(torch.zeros(0)))
    found = [m for name, m in model.named_modules() if name and name_matches(name, targets)]
    if not found:
        raise CondLoRAError(f"floor: target_modules {','.join(targets)} matched no module")
    for module in found:
        module.register_forward_hook(lambda _m, _i, out: _Tap.apply(out, model.floor_anchor))
    return model


class Runner:
    """A model, a batch and an optimizer for one method; `step()` is what is timed."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..runner.models import load_classifier

        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(0)
        model = load_classifier(args.model, num_labels=2, dtype=DTYPES[args.precision],
                                trust_remote_code=args.trust_remote_code)
        if getattr(model.config, "problem_type", "") is None:  # what the first call would set: no recompile
            model.config.problem_type = "single_label_classification"
        model = apply_method(model, args.method, args.r, args.alpha, args.target_modules.split(","))
        self.model = model.to(self.device)
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.train = args.method in TRAIN_METHODS
        self.model.train(self.train)
        gen = torch.Generator().manual_seed(1234)
        vocab = self.model.get_input_embeddings().num_embeddings
        shape = (args.batch_size, args.max_length)
        self.ids = torch.randint(5, vocab, shape, generator=gen).to(self.device)
        self.mask = torch.ones(shape, dtype=torch.long, device=self.device)
        self.labels = torch.randint(0, 2, (args.batch_size,), generator=gen).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad and p.numel()]
        self.trainable = sum(p.numel() for p in params) if self.train else 0
        self.opt = torch.optim.AdamW(params, lr=1e-5) if self.train and params else None

    def step(self) -> None:
        """One training step (forward, backward, optimizer) or one no-grad eval forward."""
        if not self.train:
            with torch.no_grad():
                self.forward(input_ids=self.ids, attention_mask=self.mask)
        elif self.opt is None:  # the floor: nothing to update
            self.forward(input_ids=self.ids, attention_mask=self.mask, labels=self.labels).loss.backward()
        else:
            self.opt.zero_grad(set_to_none=True)
            out = self.forward(input_ids=self.ids, attention_mask=self.mask, labels=self.labels)
            out.loss.backward()
            self.opt.step()
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, steps: int, warmup: int) -> tuple[list[float], list[float]]:
        """Wall and process-CPU seconds of each of `steps` timed steps after `warmup` untimed ones."""
        for _ in range(warmup):
            self.step()
        wall, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            self.step()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return wall, cpu


def first_step_peak_mb(runner: Runner) -> float:
    """Peak MiB of tensors allocated during the method's first step and alive at once.

    The first step is the one that also creates the gradients, the optimizer state and any cache, so
    this is everything training needs on top of the model: activations, gradients, optimizer state and
    temporaries. CPU: a running sum of torch's own allocation records (profiler, memory on); CUDA:
    `max_memory_allocated` above the level before the step. Independent of the C allocator's caching.
    """
    if runner.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        runner.step()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def process_peak_mb(cuda: bool, rss_start_kb: int) -> dict[str, float]:
    """Whole-run peaks: resident set above its post-build level on CPU, `max_memory_allocated` on CUDA."""
    if cuda:
        return {"cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"rss_peak_mb": (read_status_kb("VmHWM") - rss_start_kb) / 1024}


def reset_rss_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def read_status_kb(field: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM); where that is missing, `ru_maxrss` (kB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def answer(data: dict) -> None:
    """Write one protocol line to the parent."""
    sys.stdout.write(ANSWER_MARK + json.dumps(data) + "\n")
    sys.stdout.flush()


def serve(runner: Runner, memory: Callable[[], dict], read_line: Callable[[], str]) -> None:
    """Answer the parent's commands until `quit` or end of input."""
    while line := read_line():
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            wall, cpu = runner.run(cmd["steps"], cmd["warmup"])
            answer({"wall": wall, "cpu": cpu, "median_wall": statistics.median(wall),
                    "median_cpu": statistics.median(cpu)})
        elif cmd["cmd"] == "mem":
            answer(memory())
        else:
            return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's arguments (set by the parent, not by users)."""
    p = argparse.ArgumentParser(prog="python -m condlora.bench.worker")
    p.add_argument("--method", choices=BENCH_METHODS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--target-modules", default="query,value")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--compile", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the method's model, report readiness, then serve commands."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        runner = Runner(args)
    except CondLoRAError as e:
        answer({"error": str(e)})
        return 2
    rss_reset = not runner.cuda and reset_rss_peak()
    rss_start = read_status_kb("VmRSS") if not runner.cuda else 0
    tensor_peak = first_step_peak_mb(runner)
    answer({"ready": True, "trainable": runner.trainable, "threads": torch.get_num_threads(),
            "step_mb": tensor_peak, "rss_reset": rss_reset})
    serve(runner, lambda: process_peak_mb(runner.cuda, rss_start), sys.stdin.readline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
