"""`train(cfg)`: one fine-tuning run on one GLUE task with the paper's protocol.

Protocol: GLUE train shuffled with split seed 1, its first 10% validate (model selection), the rest
trains; the official dev set is the test set. AdamW, linear schedule with warmup over `epochs`, evaluation
once per epoch (or every `eval_every` steps), early stopping after `patience` evaluations without a better
validation score, and the best checkpoint by validation score is tested.

The loop runs unchanged under `torchrun` and `accelerate launch`: `accelerate.Accelerator` splits each
batch across processes, gathers predictions, and only the main process writes files. A run resumes
from its last checkpoint with `resume=True` and ends exactly as an uninterrupted run (CPU).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import CondLoRAError, ConfigError
from ..fileio import append_jsonl, read_jsonl, write_json, write_text
from .batching import epoch_order
from .checkpoint import CHECKPOINT_DIR, RunState, load_checkpoint, load_trainable, save_checkpoint
from .distributed import check_distributed
from .glue import Encoded, TaskData, load_glue, subsample
from .methods import is_head_param, parameter_counts, save_best, setup_method, trainable_state
from .metrics import compute_metrics
from .models import head_module_names, load_classifier, load_tokenizer, model_targets, quiet_loading
from .names import user_method
from .owndata import load_files, task_record
from .rundir import check_output_dir, clear_run_files, cpu_info, versions
from .train_config import TrainConfig, native_bf16_cpu

__all__ = ["TrainConfig", "TrainingDiverged", "train", "versions"]


class TrainingDiverged(CondLoRAError):
    """The loss became NaN or infinite."""


def _require_extras() -> None:
    """A clear error when the packages of the `experiments` extra are missing."""
    import importlib.util

    missing = [m for m in ("accelerate", "sklearn", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise CondLoRAError(f"condlora train needs {', '.join(missing)}: pip install 'condlora[experiments]'")


def _accelerator(cfg: TrainConfig):
    _require_extras()
    from accelerate import Accelerator

    cpu_ok = cfg.precision == "fp32" or (cfg.precision == "bf16" and native_bf16_cpu())
    if not cpu_ok and not torch.cuda.is_available():
        cpu = " or a CPU with native bf16 (avx512_bf16 or AMX)" if cfg.precision == "bf16" else ""
        raise ConfigError(f"precision {cfg.precision} (autocast) needs a CUDA GPU{cpu}; use fp32 on this CPU")
    from accelerate.state import AcceleratorState

    check_distributed()
    mixed = "no" if cfg.precision == "fp32" else cfg.precision
    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()  # another precision in the same process; the process group stays
    # cpu=True without CUDA: accelerate only sets up multi-process CPU (gloo) runs under torchrun when told so
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    check_distributed(accelerator)
    return accelerator


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: torch.nn.Module, heads: list[str], cfg: TrainConfig) -> list[dict]:
    """AdamW's parameter groups: every trainable parameter at `lr`, or, with a head LR of its own, the adapter
    (or body) at `lr` and the classification head at `head_lr`."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.head_lr is None:
        return [{"params": [p for _, p in params]}]
    groups = [{"params": [p for n, p in params if not is_head_param(n, heads)]},
              {"params": [p for n, p in params if is_head_param(n, heads)], "lr": cfg.head_lr}]
    return [g for g in groups if g["params"]]


class Run:
    """The state of one training run: data, model, optimizer and the loop over steps."""

    def __init__(self, cfg: TrainConfig, accelerator) -> None:
        self.cfg, self.acc, self.out = cfg, accelerator, Path(cfg.output_dir)
        self.session_start = time.perf_counter()
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self.data = load_files(cfg) if cfg.train_file else load_glue(cfg.task, cfg.glue_dir)
        self.task = self.data.task
        tokenizer, model = self._build_model()
        self._encode(tokenizer, self.data)
        self.steps_per_epoch = math.ceil(len(self.train_enc) / cfg.batch_size)
        self.total_steps = math.ceil(cfg.epochs * self.steps_per_epoch)
        optimizer = torch.optim.AdamW(param_groups(model, self.heads, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = _linear_schedule(optimizer, math.ceil(cfg.warmup_ratio * self.total_steps),
                                          self.total_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.state = RunState()
        self.best = self.snapshot()
        self._perm_epoch, self._perm = -1, []
        self.checkpoint_step = 0

    def _build_model(self) -> tuple:
        """Tokenizer and model with the method's adapter; records parameter counts."""
        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
        with quiet_loading(cfg.quiet):
            model = load_classifier(cfg.model, num_labels=self.task.num_labels,
                                    trust_remote_code=cfg.trust_remote_code)
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:  # GPT-style models
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.heads = head_module_names(model, cfg.head)
        base_params = sum(p.numel() for p in model.parameters())
        targets = model_targets(model, cfg.target_modules)  # MPNet: query,value -> q,v
        model = setup_method(model, cfg.method_setup(targets))
        self.counts = {**parameter_counts(model, self.heads), "base": base_params}
        return tokenizer, model

    def _encode(self, tokenizer, data: TaskData) -> None:
        cfg = self.cfg
        train = data.train if cfg.max_train_samples is None else data.train.select(
            range(min(cfg.max_train_samples, len(data.train))))
        val = data.val if cfg.max_eval_samples is None else data.val.select(
            range(min(cfg.max_eval_samples, len(data.val))))
        enc = lambda ex: Encoded(ex, tokenizer, cfg.max_length, cfg.pad_to_max_length)  # noqa: E731
        if not len(val) or not len(train):
            raise CondLoRAError(f"{cfg.task}: {len(train)} training and {len(val)} validation examples; "
                                "the train file has too few rows")
        self.train_enc, self.val_enc = enc(train), enc(val)
        self.test_encs = {p: enc(subsample(ex, cfg.max_eval_samples)) for p, ex in data.test_parts.items()}

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model without DDP wrapping."""
        return self.acc.unwrap_model(self.model)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the trainable weights (the best-so-far model)."""
        return {k: v.detach().cpu().clone() for k, v in trainable_state(self.unwrapped).items()}

    def batch_indices(self, step: int) -> list[int]:
        """This process's share of the global batch of `step` (a seeded order per epoch, see `epoch_order`)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = epoch_order(self.train_enc.lengths, self.cfg.batch_size, self.cfg.seed, epoch,
                                     self.cfg.group_by_length)
            self._perm_epoch = epoch
        idx = self._perm[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]
        return idx[self.acc.process_index::self.acc.num_processes] or idx[-1:]

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimizer step; returns (loss, global batch size)."""
        idx = self.batch_indices(step)
        batch = {k: v.to(self.acc.device) for k, v in self.train_enc.batch(idx).items()}
        with self.acc.autocast():
            loss = self.model(**batch).loss
        bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=self.acc.device)
        if self.acc.num_processes > 1:
            bad = self.acc.reduce(bad, "sum")
        if bad.item() > 0:
            kept = (f"the last good checkpoint (step {self.checkpoint_step}) is kept in {self.out / CHECKPOINT_DIR}"
                    if self.checkpoint_step else "no checkpoint was written yet")
            raise TrainingDiverged(f"loss became {loss.item()} at step {step + 1}; {kept}; try a lower --lr")
        self.acc.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        n = min(self.cfg.batch_size, len(self.train_enc) - (step % self.steps_per_epoch) * self.cfg.batch_size)
        return loss.item(), n

    @torch.no_grad()
    def predict(self, enc: Encoded, desc: str | None = None) -> np.ndarray:
        """Predicted label ids (scores for regression) of every example, gathered from all processes; with a
        `desc`, a progress bar of its batches (the final test evaluation)."""
        from tqdm.auto import tqdm

        self.model.eval()
        order = np.argsort(enc.lengths, kind="stable").tolist()
        world, rank = self.acc.num_processes, self.acc.process_index
        share = math.ceil(len(order) / world)
        mine = order[rank::world]
        ids = mine + [-1] * (share - len(mine))
        mine = mine + [order[-1]] * (share - len(mine))
        preds = []
        quiet = desc is None or self.cfg.quiet or not self.acc.is_main_process
        for i in tqdm(range(0, len(mine), 2 * self.cfg.batch_size), desc=desc, unit="batch", disable=quiet,
                      leave=False, dynamic_ncols=True):
            batch = enc.batch(mine[i:i + 2 * self.cfg.batch_size])
            batch = {k: v.to(self.acc.device) for k, v in batch.items() if k != "labels"}
            with self.acc.autocast():
                logits = self.model(**batch).logits.float()
            preds.append(logits[:, 0] if self.task.is_regression else logits.argmax(-1).float())
        p, i = torch.cat(preds), torch.tensor(ids, device=self.acc.device)
        if world > 1:
            p, i = self.acc.gather(p), self.acc.gather(i)
        out = np.zeros(len(order))
        keep = (i >= 0).cpu().numpy()
        out[i.cpu().numpy()[keep]] = p.cpu().numpy()[keep]
        self.model.train()
        return out if self.task.is_regression else out.astype(np.int64)

    def evaluate(self) -> dict:
        """Validation metrics now (one metrics.jsonl record); keeps the best weights; counts toward patience."""
        metrics = compute_metrics(self.task, self.predict(self.val_enc), self.val_enc.labels.numpy())
        score, st = metrics[self.task.metric], self.state
        improved = st.best_score is None or score > st.best_score
        if improved:
            st.best_score, st.best_step, st.best_val, st.bad_evals = score, st.step, metrics, 0
            self.best = self.snapshot()
        else:
            st.bad_evals += 1
        patience_out = self.cfg.patience is not None and st.bad_evals >= self.cfg.patience
        st.stopped_early = patience_out and st.step < self.total_steps
        record = {"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4),
                  "lr": self.scheduler.get_last_lr()[0], "val": metrics, "val_score": score, "best": improved,
                  "bad_evals": st.bad_evals, "train_loss": st.loss_sum / max(1, st.loss_count)}
        st.loss_sum, st.loss_count = 0.0, 0
        if self.acc.is_main_process:
            append_jsonl(self.out / "metrics.jsonl", record)
        return record

    def wall_time(self) -> float:
        """Seconds of wall time over every session of this run (up to the last checkpoint for killed ones)."""
        return self.state.wall_time_s + time.perf_counter() - self.session_start

    def checkpoint(self) -> None:
        """Write the checkpoint (main process only)."""
        if self.acc.is_main_process:
            state = replace(self.state, wall_time_s=self.wall_time())
            save_checkpoint(self.out, self.unwrapped, self.optimizer, self.scheduler, self.best, state)
        self.checkpoint_step = self.state.step
        self.acc.wait_for_everyone()

    def resume(self) -> None:
        """Restore the last checkpoint if there is one; drop metrics.jsonl records after it."""
        loaded = load_checkpoint(self.out, self.unwrapped, self.optimizer, self.scheduler)
        if loaded is None:  # killed before its first checkpoint: start afresh
            if self.acc.is_main_process:
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
            return
        self.state, self.best = loaded
        self.checkpoint_step = self.state.step
        self.session_start = time.perf_counter()
        records = [r for r in read_jsonl(self.out / "metrics.jsonl") if r["step"] <= self.state.step]
        if self.acc.is_main_process:
            write_text(self.out / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        if not self.cfg.quiet and self.acc.is_main_process:
            print(f"resuming from step {self.state.step} of {self.total_steps}")

    def loop(self, on_step: Callable[[int], None] | None = None) -> None:
        """Train until the last step or an early stop, evaluating and checkpointing on schedule."""
        from tqdm.auto import tqdm

        cfg, st = self.cfg, self.state
        bar = tqdm(total=self.total_steps, initial=st.step, unit="step", dynamic_ncols=True,
                   desc=f"{cfg.task} {user_method(cfg.method)}", disable=cfg.quiet or not self.acc.is_main_process)
        self.model.train()
        while st.step < self.total_steps and not st.stopped_early:
            t0 = time.perf_counter()
            loss, n = self.train_step(st.step)
            st.train_time_s += time.perf_counter() - t0
            st.step += 1
            st.examples += n
            st.loss_sum += loss
            st.loss_count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{st.examples / max(st.train_time_s, 1e-9):.1f}")
            step, last = st.step, st.step == self.total_steps
            evaluate = last or (step % cfg.eval_every == 0 if cfg.eval_every else step % self.steps_per_epoch == 0)
            if evaluate:
                self.evaluate()
            if evaluate or (cfg.save_every and step % cfg.save_every == 0):
                self.checkpoint()
            if on_step is not None:
                on_step(step)
        bar.close()

    def finish(self) -> dict:
        """Load the best weights, test them, write the best adapter and results.json."""
        load_trainable(self.unwrapped, self.best, "best weights")
        preds = {p: self.predict(e, desc=f"{self.cfg.task} test ({p})") for p, e in self.test_encs.items()}
        labels = {p: e.labels.numpy() for p, e in self.test_encs.items()}
        test = compute_metrics(self.task, np.concatenate(list(preds.values())),
                               np.concatenate(list(labels.values()))) if preds else {}  # own data: test file optional
        if len(preds) > 1:
            for p in preds:
                test.update({f"{p}_{k}": v for k, v in compute_metrics(self.task, preds[p], labels[p]).items()})
        results = self.results(test)
        if self.acc.is_main_process:
            results["saved"] = save_best(self.unwrapped, self.cfg.method, self.out)
            write_json(self.out / "results.json", results)
            for folder in (CHECKPOINT_DIR, f".{CHECKPOINT_DIR}.old"):
                shutil.rmtree(self.out / folder, ignore_errors=True)
        self.acc.wait_for_everyone()
        return results

    def results(self, test: dict) -> dict:
        """The results dict of TRAIN_INTERFACE.md."""
        cfg, st, metric = self.cfg, self.state, self.task.metric
        return {
            "task": cfg.task, "method": cfg.method, "model": cfg.model, "seed": cfg.seed, "lr": cfg.lr,
            "head_lr": cfg.effective_head_lr,
            "metric": metric, "val_score": st.best_score, "test_score": test.get(metric),
            "val_metrics": st.best_val, "test_metrics": test,
            "trainable_params": self.counts["trainable"], "head_params": self.counts["head"],
            "base_params": self.counts["base"],
            "examples_per_sec": st.examples / max(st.train_time_s, 1e-9), "train_time_s": st.train_time_s,
            "wall_time_s": self.wall_time(), "best_step": st.best_step, "total_steps": self.total_steps,
            "epochs": cfg.epochs, "epochs_run": round(st.step / self.steps_per_epoch, 4), "steps_run": st.step,
            "stopped_early": st.stopped_early, "patience": cfg.patience, "head": cfg.head,
            "head_modules": self.heads, "group_by_length": cfg.group_by_length,
            "train_size": len(self.train_enc), "val_size": len(self.val_enc),
            "test_size": sum(len(e) for e in self.test_encs.values()),
            "num_processes": self.acc.num_processes, "library_version": __version__, **task_record(self.task),
        }


def counts_line(cfg: TrainConfig, counts: dict[str, int]) -> str:
    """'<task> <method>: 24,576 trainable adapter parameters + 592,130 head (base model 109,488,002)'."""
    what = "trainable body" if cfg.method == "full" else "trainable adapter"
    return (f"{cfg.task} {user_method(cfg.method)}: {counts['trainable']:,} {what} parameters + "
            f"{counts['head']:,} head (base model {counts['base']:,})")


def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict:
    """Run one fine-tuning; returns the results dict (also written atomically to output_dir/results.json).

    If output_dir/results.json already exists for the same config, return it without training.
    `on_step(step)` is called after every optimizer step (after any evaluation and checkpoint of that step).
    """
    out = Path(cfg.output_dir)
    accelerator = _accelerator(cfg)
    done = check_output_dir(cfg, out)
    if done is not None:
        if not cfg.quiet and accelerator.is_main_process:
            print(f"{cfg.task} {user_method(cfg.method)}: this run is already complete (val "
                  f"{done['val_score']:.4f}, test {done['test_score']:.4f}); results in {out / 'results.json'}. "
                  "Pass --overwrite to train again.")
        return done
    if accelerator.is_main_process:
        if cfg.overwrite:
            clear_run_files(out)
        elif not cfg.resume:
            (out / "metrics.jsonl").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    run = Run(cfg, accelerator)
    if accelerator.is_main_process:
        write_json(out / "config.json", {"run": cfg.run_dict(), "versions": versions(),
                                         "num_processes": accelerator.num_processes,
                                         "device": str(accelerator.device), "cpu": cpu_info(),
                                         "params": run.counts})
    if not cfg.quiet and accelerator.is_main_process:
        print(counts_line(cfg, run.counts))
    if cfg.resume:
        run.resume()
    run.loop(on_step)
    results = run.finish()
    if not cfg.quiet and accelerator.is_main_process:
        test = "no test file" if results["test_score"] is None else f"test {results['test_score']:.4f}"
        print(f"{cfg.task} {user_method(cfg.method)}: val {results['metric']} {results['val_score']:.4f}, {test} "
              f"(best step {results['best_step']}{', stopped early' if results.get('stopped_early') else ''}); "
              f"wrote {out}")
    return results
