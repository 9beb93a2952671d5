"""torch FSDP2 (`fully_shard`) on CPU/gloo around an `apply_adapter`'d tiny BERT: 3 AdamW steps.

Each transformer layer is its own FSDP unit; the root unit holds the CondLoRA generators (they sit at
`model.condlora_generators`, and layers only reference them), so the shared Θ are unsharded for the whole
forward and backward. Prints one JSON line on rank 0: the largest difference to a 1-process run with the
whole batch. Run with `torchrun --nproc_per_node 2 fsdp_steps.py`.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from condlora import AdapterConfig, apply_adapter
from conftest import tiny_bert

BATCH, STEPS = 8, 3


def build(train_a: bool) -> torch.nn.Module:
    """The same adapted tiny BERT in every process (no dropout)."""
    torch.manual_seed(0)
    model = tiny_bert()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    cfg = AdapterConfig(method="condlora", r=4, target_modules=["query", "value"], train_a=train_a,
                        modules_to_save=["classifier"])
    return apply_adapter(model, cfg)


def train(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> None:
    """STEPS AdamW steps on (ids, labels)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(STEPS):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


def max_difference(train_a: bool) -> dict:
    """Trainable names equal and the largest |FSDP - single process| after STEPS steps."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(0, 100, (BATCH, 12), generator=gen), torch.randint(0, 2, (BATCH,), generator=gen)
    ref = build(train_a)
    train(ref, ids, labels)
    model = build(train_a)
    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    train(model, ids[share], labels[share])
    got = {n: p.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
    want = {n: p.detach() for n, p in ref.named_parameters() if p.requires_grad}
    moved = max((want[n] - p.detach()).abs().max().item() for n, p in build(train_a).named_parameters()
                if p.requires_grad)
    return {"train_a": train_a, "same_names": sorted(got) == sorted(want), "n": len(want), "moved": moved,
            "max_diff": max((got[n] - want[n]).abs().max().item() for n in want)}


def main() -> None:
    """Both variants; one JSON line each on rank 0."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for train_a in (True, False):
        result = max_difference(train_a)
        if dist.get_rank() == 0:
            print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
