"""Run 3 optimizer steps of `condlora train`'s loop per method and save the trainable tensors (rank 0).

Used by tests/test_scale.py, under `torchrun --nproc_per_node 2` and in a single process.
Usage: python ddp_steps.py MODEL_DIR GLUE_DIR OUT_DIR METHOD [METHOD ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from condlora.runner.methods import trainable_state
from condlora.runner.train import Run, TrainConfig, _accelerator

STEPS = 3


def three_steps(model: str, glue: str, out: Path, method: str) -> dict[str, torch.Tensor]:
    """The trainable tensors after 3 steps of a batch-8 run (split across the processes).

    `METHOD:grouped` runs METHOD with length-grouped batches.
    """
    name, _, grouped = method.partition(":")
    cfg = TrainConfig(task="rte", method=name, model=model, glue_dir=glue, output_dir=str(out / method),
                      epochs=1, lr=1e-2, batch_size=8, max_length=32, quiet=True, group_by_length=bool(grouped))
    acc = _accelerator(cfg)
    run = Run(cfg, acc)
    run.model.train()
    for step in range(STEPS):
        run.train_step(step)
    return {k: v.detach().cpu().clone().contiguous() for k, v in trainable_state(run.unwrapped).items()}


def main(argv: list[str]) -> None:
    """Save `OUT_DIR/METHOD.safetensors` for each method (main process only) and the world size."""
    model, glue, out, methods = argv[0], argv[1], Path(argv[2]), argv[3:]
    torch.set_num_threads(1)
    for method in methods:
        tensors = three_steps(model, glue, out, method)
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process:
            save_file(tensors, str(out / f"{method}.safetensors"), metadata={"world": str(state.num_processes)})
        state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1:])
