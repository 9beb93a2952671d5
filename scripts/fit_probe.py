"""Why does CondLoRA under-fit on MiniLM? Train variants side by side on one GLUE subset and log the fit.

An investigation script, not part of the library: each variant is LoRA (real PEFT) or CondLoRA with one thing
changed, trained with the same data order, AdamW, linear schedule with warmup 0.1 and head, and logged per
epoch (mean training loss, validation metric). Variants (NAME@LR, comma-separated):

  lora                 real PEFT LoRA
  condlora             CondLoRA as `condlora train` runs it (paper form on square layers, Θ_A kaiming)
  condlora-general     A = θ_A·W0, B = W0·θ_B instead of the paper form
  condlora-ascaleK     Θ_A's kaiming init multiplied by K (init-scale study), e.g. condlora-ascale10
  condlora-eqnorm      generate from W0_l·(c/σ_max(W0_l)): every layer's spectral norm set to the mean c
  condlora-polar       generate from the polar factor U·Vᵀ of W0_l times W0_l's RMS singular value: the same
                       singular vectors, all singular values equal (tests the conditioning hypothesis)
  condlora-unshared    one generator per layer instead of one per module type (6x the parameters on MiniLM,
                       as many as LoRA): does sharing across layers hold CondLoRA back?
  condlora-polar-unshared  both: a per-layer generator reading W0's polar factor is LoRA in a rotated basis,
                       with ΔW scaled by W0's mean squared singular value
  condlora-orth-unshared   the same with unit singular values (U·Vᵀ): exactly LoRA's model and init scale
                       in per-layer rotated coordinates (the control: only Adam's coordinates differ)
  ...-rN                any variant with rank N instead of 8 (alpha = N, so the scaling stays 1), e.g. lora-r1
                       (about CondLoRA's parameter count) or condlora-r48 (LoRA's): capacity or optimization?

  python scripts/fit_probe.py --task mrpc --variants lora@2e-3,condlora@2e-3 --out runs/probe.jsonl
  python scripts/fit_probe.py --summary runs/probe.jsonl      # a markdown table of every variant and seed
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from condlora.layers import ABGenerator, CondLoRALinear, generate_ab, set_fast_path
from condlora.runner.glue import Encoded, load_glue, subsample
from condlora.runner.methods import MethodSetup, setup_method
from condlora.runner.metrics import compute_metrics
from condlora.runner.models import load_classifier, load_tokenizer
from condlora.runner.train import _linear_schedule


def source_transform(kind: str, weights: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per W0 (by data_ptr) the matrix the generator reads instead of W0 for `kind` (eqnorm / polar)."""
    out = {}
    sig_max = [torch.linalg.matrix_norm(w, ord=2).item() for w in weights]
    for w, s in zip(weights, sig_max, strict=True):
        if kind == "eqnorm":
            out[w.data_ptr()] = w * (float(np.mean(sig_max)) / s)
        else:  # polar (scaled to W0's RMS singular value) or orth (unit singular values)
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
            scale = torch.linalg.matrix_norm(w) / math.sqrt(min(w.shape)) if kind == "polar" else 1.0
            out[w.data_ptr()] = (u @ vh) * scale
    return out


def reroute_sources(model: torch.nn.Module, kind: str) -> None:
    """Make every CondLoRA generator read the `kind`-transformed W0 (reference path, no fast path)."""
    set_fast_path(model, False)
    layers = [m for m in model.modules() if isinstance(m, CondLoRALinear)]
    by_gen: dict[int, tuple[ABGenerator, list]] = {}
    for m in layers:
        by_gen.setdefault(id(m.generator), (m.generator, []))[1].append(m.w0().detach())
    for gen, weights in by_gen.values():
        table = source_transform(kind, weights)
        gen.generate = _generate_from(gen, table)


def _generate_from(gen: ABGenerator, table: dict[int, torch.Tensor]):
    """A `generate` that reads the matrix `table` holds for W0 instead of W0 itself."""
    return lambda w0: generate_ab(gen.theta_A, gen.theta_B, table[w0.data_ptr()], gen.form)


def unshare(model: torch.nn.Module) -> None:
    """Give every CondLoRA layer its own copy of its generator (registered on the model, so it trains)."""
    import copy

    layers = [m for m in model.modules() if isinstance(m, CondLoRALinear)]
    copies = []
    for m in layers:
        own = copy.deepcopy(m.generator)
        object.__setattr__(m, "generator", own)
        copies.append(own)
    model.probe_generators = torch.nn.ModuleList(copies)
    for p in model.condlora_generators.parameters():
        p.requires_grad_(False)  # the shared originals are no longer used


def build(variant: str, model_name: str, num_labels: int, seed: int) -> torch.nn.Module:
    """The model of one variant, with exactly its adapter's parameters (and the head) trainable."""
    torch.manual_seed(seed)
    model = load_classifier(model_name, num_labels=num_labels)
    rank = re.fullmatch(r"(.+)-r(\d+)", variant)
    r, variant = (int(rank.group(2)), rank.group(1)) if rank else (8, variant)
    method = "lora" if variant == "lora" else "condlora"
    form = "general" if variant == "condlora-general" else "auto"
    # the classifier-only head the recorded probe ran with (docs/results.md)
    model = setup_method(model, MethodSetup(method, r, float(r), 0.0, ["query", "value"], seed, form, head="linear"))
    if method == "lora":
        return model
    scale = re.fullmatch(r"condlora-ascale([0-9.]+)", variant)
    if scale:
        for m in model.modules():
            if isinstance(m, ABGenerator):
                m.theta_A.data.mul_(float(scale.group(1)))
    elif variant in ("condlora-eqnorm", "condlora-polar"):
        reroute_sources(model, variant.split("-")[1])
    elif variant in ("condlora-unshared", "condlora-polar-unshared", "condlora-orth-unshared"):
        unshare(model)
        if variant != "condlora-unshared":  # one orthogonal basis per layer: LoRA re-parameterized
            reroute_sources(model, variant.split("-")[1])
    elif variant not in ("condlora", "condlora-general"):
        raise SystemExit(f"unknown variant {variant!r}")
    return model


def evaluate(model, enc: Encoded, task) -> dict[str, float]:
    """The task's metrics of `model` on `enc`."""
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(enc), 64):
            logits = model(**{k: v for k, v in enc.batch(range(i, min(i + 64, len(enc)))).items()
                              if k != "labels"}).logits
            preds.append(logits.squeeze(-1) if task.is_regression else logits.argmax(-1))
    model.train()
    return compute_metrics(task, torch.cat(preds).numpy(), enc.labels.numpy())


def run(variant: str, lr: float, args) -> list[dict]:
    """Train one variant; one record per epoch."""
    data = load_glue(args.task, args.glue_dir)
    tok = load_tokenizer(args.model)
    train = Encoded(data.train.select(range(args.train)), tok, args.max_length)
    val = Encoded(subsample(data.val, args.eval), tok, args.max_length)
    model = build(variant, args.model, data.task.num_labels, args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(train) / 16)
    total, warm = steps_per_epoch * args.epochs, math.ceil(0.1 * steps_per_epoch * args.epochs)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = _linear_schedule(opt, warm, total)  # the trainer's own schedule
    gen = torch.Generator().manual_seed(args.seed)
    records, start = [], time.time()
    for epoch in range(args.epochs):
        perm, losses = torch.randperm(len(train), generator=gen).tolist(), []
        for i in range(0, len(perm), 16):
            loss = model(**train.batch(perm[i:i + 16])).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
        val_metrics = {f"val_{k}": v for k, v in evaluate(model, val, data.task).items()}
        rec = {"variant": variant, "lr": lr, "seed": args.seed, "task": args.task, "epoch": epoch + 1,
               "train_loss": float(np.mean(losses)), **val_metrics,
               "trainable": sum(p.numel() for p in params), "time_s": round(time.time() - start, 1)}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def summary(paths: list[str]) -> str:
    """Markdown: per variant and LR, the last epoch's training loss and the best validation metric, per seed."""
    runs: dict[tuple, dict[int, list[dict]]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            runs.setdefault((r["variant"], r["lr"]), {}).setdefault(r["seed"], []).append(r)
    first = next(iter(next(iter(runs.values())).values()))[0]
    key = next(k for k in first if k.startswith("val_"))  # the task's main metric comes first
    lines = [f"| variant | LR | seeds | final train loss (per seed) | best {key} (per seed) |", "|---|---|---|---|---|"]
    for (variant, lr), seeds in runs.items():
        loss = [recs[-1]["train_loss"] for _, recs in sorted(seeds.items())]
        best = [max(r[key] for r in recs) for _, recs in sorted(seeds.items())]
        cells = [f"{np.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" for v in (loss, best)]
        lines.append(f"| {variant} | {lr:g} | {len(seeds)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    """Run every NAME@LR variant in turn and append its records to --out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mrpc")
    p.add_argument("--variants", help="comma-separated NAME@LR")
    p.add_argument("--summary", nargs="+", metavar="JSONL", help="print the table of these result files and stop")
    p.add_argument("--model", default="minilm")
    p.add_argument("--glue-dir", default=None)
    p.add_argument("--train", type=int, default=800, help="first N examples of the 90%% train part")
    p.add_argument("--eval", type=int, default=400, help="validation examples")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if not (args.variants and args.out):
        p.error("--variants and --out are needed to train")
    for item in args.variants.split(","):
        name, lr = item.split("@")
        records = run(name, float(lr), args)
        with Path(args.out).open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
