"""torch.compile traces a training step of every adapter kind without a graph break (dynamo, CPU)."""

import pytest
import torch
from torch._dynamo.utils import counters

from condlora import apply_adapter
from conftest import adapter_config, tiny_bert, tiny_llama

# condlora: the general form; condlora-auto: the paper's form on square layers (all of BERT's, LLaMA's q_proj)
CASES = [("lora", True), ("condlora", True), ("condlora-auto", True), ("condlora", False)]
MODELS = {"bert": (tiny_bert, ["query", "value"]), "llama": (tiny_llama, ["q_proj", "v_proj"])}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(("method", "train_a"), CASES)
def test_training_step_compiles_without_graph_breaks(arch, method, train_a):
    """Forward, loss and backward of a compiled model, training mode, the fast path's token count, CondLoRA's
    generation batched as on a GPU.

    Backend "eager": graph breaks are decided by dynamo whatever the backend, and it keeps the test short
    (`test_fastpath.py` compiles with "aot_eager" and checks outputs and gradients).
    """
    build, targets = MODELS[arch]
    model = apply_adapter(build(), adapter_config(method, r=4, target_modules=targets, train_a=train_a)).train()
    model.config.problem_type = "single_label_classification"  # else set by the first call: a recompile
    for gen in getattr(model, "condlora_generators", {}).values():
        gen.per_layer_devices = ()  # the batched generation, as on a GPU
    ids = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1]) if arch == "bert" else ids
    torch._dynamo.reset()
    counters.clear()
    torch.compile(model, backend="eager")(input_ids=ids, labels=labels).loss.backward()
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
