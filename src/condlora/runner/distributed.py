"""Which multi-process engines `condlora train` runs under: DDP (torchrun, accelerate launch), not FSDP or DeepSpeed.

DDP keeps a whole copy of the model in every process, so the shared CondLoRA generators (used by every
layer) are ordinary parameters whose gradients DDP all-reduces once per step. FSDP and DeepSpeed ZeRO-3
shard parameters: saving the adapter and the checkpoint would need gathered tensors, which this training
loop does not do, so both are refused before anything is written (see docs/scaling.md).
"""

from __future__ import annotations

import os

from ..errors import ConfigError

SHARDED = {"FSDP": ("ACCELERATE_USE_FSDP", "FSDP"), "DEEPSPEED": ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")}


def check_distributed(accelerator=None) -> None:
    """Refuse FSDP and DeepSpeed early: the checkpoint and adapter code here needs whole (unsharded) tensors.

    Call it before creating the `Accelerator` (the launcher's environment variables: without a GPU,
    accelerate fails with a traceback while building its FSDP plugin) and again with the accelerator (its
    `distributed_type`).
    """
    kind = getattr(getattr(accelerator, "distributed_type", None), "name", None)
    for key, (env, name) in SHARDED.items():
        if kind == key or os.environ.get(env, "false").lower() in ("1", "true"):
            raise ConfigError(f"condlora train does not support {name} (its checkpoints and adapters need whole, "
                              "unsharded tensors); use DDP: torchrun --nproc_per_node N -m condlora train ... or "
                              "accelerate launch --multi_gpu --num_processes N -m condlora train ...")
