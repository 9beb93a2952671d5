"""The fast paths of the adapter layers give the reference path's outputs and gradients (fp32/fp64)."""

import pytest
import torch
from torch import nn

from condlora import AdapterConfig, LoRALinear, adapter_layers, apply_adapter
from condlora.layers import LowRankLinear, set_fast_path
from conftest import MODELS, VARIANTS, adapter_config, logits, tiny_bert


def perturb(model, seed=5):
    """Non-zero B / Θ_B (and a moved A) so every adapter term is live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("lora_A", "lora_B", "theta_A", "theta_B")):
                scale = 5.0 if "theta_B" in name else 0.3
                p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * scale)


def no_dropout(model):
    """The models' own dropout off, so both passes see the same function (transformers 4.x's SDPA BERT
    reads a float `dropout_prob` instead of its nn.Dropout)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout_prob", None), float):
            m.dropout_prob = 0.0


def grads_after_step(model, ids, fast):
    """Loss and the gradient of every trainable parameter after one backward, fast or reference path."""
    set_fast_path(model, fast)
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids).logits
    loss = out.float().pow(2).sum()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


CASES = [(*v, torch.float64) for v in VARIANTS] + [("lora", True, torch.float32), ("condlora", True, torch.float32)]


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(("method", "train_a", "dtype"), CASES)
def test_training_fast_path_matches_reference(arch, method, train_a, dtype):
    build, targets = MODELS[arch]
    model = apply_adapter(build().to(dtype),
                          adapter_config(method, r=4, target_modules=targets, train_a=train_a))
    no_dropout(model)
    perturb(model)
    ids = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(3))  # 80 tokens: fast path
    calls = []
    hook = LowRankLinear.forward
    LowRankLinear.forward = staticmethod(lambda *a: calls.append(1) or hook(*a))
    try:
        fast_out, fast_grads = grads_after_step(model, ids, fast=True)
    finally:
        LowRankLinear.forward = staticmethod(hook)
    assert len(calls) == len(list(adapter_layers(model)))  # every layer took the fast path
    ref_out, ref_grads = grads_after_step(model, ids, fast=False)
    tol = 1e-11 if dtype == torch.float64 else 2e-5  # relative to each tensor's largest entry
    assert (fast_out - ref_out).abs().max() <= tol * ref_out.abs().max()
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) > 1
    for n, ref in ref_grads.items():
        scale = ref.abs().max()
        assert scale > 0, n
        assert (fast_grads[n] - ref).abs().max() <= tol * scale, (n, (fast_grads[n] - ref).abs().max() / scale)


@pytest.mark.parametrize("train_a", [True, False])
@pytest.mark.parametrize("conv1d", [False, True])
def test_low_rank_linear_gradcheck(train_a, conv1d):
    """LowRankLinear's backward against numerical gradients (float64), input grad included."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, 5, dtype=torch.float64, generator=g)
    w0 = w0.T.contiguous().T if conv1d else w0  # a transposed view, as GPT-2's Conv1D gives
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.randn(2, 5, dtype=torch.float64, generator=g, requires_grad=train_a)
    b = torch.randn(7, 2, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x, a, b: LowRankLinear.apply(x, w0, bias, a, b, 1.5), (x, a, b))


@pytest.mark.parametrize("form", ["paper", "general"])
def test_condlora_generation_inside_gradcheck(form):
    """With `form`, LowRankLinear generates A, B from Θ_A, Θ_B and returns Θ gradients (float64)."""
    g = torch.Generator().manual_seed(1)
    d_out, d_in = (6, 6) if form == "paper" else (7, 5)
    w0 = torch.randn(d_out, d_in, dtype=torch.float64, generator=g)
    x = torch.randn(2, 3, d_in, dtype=torch.float64, generator=g, requires_grad=True)
    ta = torch.randn(2, d_in if form == "paper" else d_out, dtype=torch.float64, generator=g, requires_grad=True)
    tb = torch.randn(*((2, d_in) if form == "paper" else (d_in, 2)), dtype=torch.float64, generator=g,
                     requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, ta, tb: LowRankLinear.apply(x, w0, None, ta, tb, 0.5, form),
                                    (x, ta, tb))


def test_layer_fast_and_reference_agree_in_float64():
    """Tight agreement in float64 for a single layer: output, input, A and B gradients."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(24, 16).double().requires_grad_(False), r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 50, 24, dtype=torch.float64)
    results = []
    for fast in (True, False):
        layer.fast_path = fast
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.pow(3).sum().backward()
        results.append((y.detach(), xi.grad, layer.lora_A.grad.clone(), layer.lora_B.grad.clone()))
        layer.zero_grad(set_to_none=True)
    for f, r in zip(*results, strict=True):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("method", "train_a"), VARIANTS)
def test_no_grad_effective_weight_matches_reference(method, train_a, ids):
    model = apply_adapter(tiny_bert(), adapter_config(method, r=4, train_a=train_a))
    perturb(model)
    fast = logits(set_fast_path(model, True), ids)
    _, layer = next(adapter_layers(model))
    assert layer._weight_cache is not None
    ref = logits(set_fast_path(model, False), ids)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref, logits(tiny_bert(), ids), atol=1e-4)  # the adapter is live


def test_effective_weight_cache_follows_updates(ids):
    model = apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=4))
    perturb(model)
    first = logits(model, ids)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_B.mul_(2)
    second = logits(model, ids)
    ref = logits(set_fast_path(model, False), ids)
    torch.testing.assert_close(second, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, second)


def test_reference_path_kept_where_fast_path_would_differ():
    """Live dropout, bf16 and trainable base weights take the reference path."""
    layer = LoRALinear(nn.Linear(64, 64).requires_grad_(False), r=4, alpha=4, dropout=0.5).train()
    x = torch.randn(8, 32, 64)
    assert not layer._fast_ok(x)
    assert layer.eval()._fast_ok(x)
    assert not layer._fast_ok(x.bfloat16())
    layer.base.weight.requires_grad_(True)
    assert not layer._fast_ok(x)


def test_few_tokens_use_thin_products():
    """With fewer tokens than 2·d_in·d_out/(d_in+d_out) the thin products are used (same result)."""
    layer = LoRALinear(nn.Linear(64, 64).requires_grad_(False), r=4, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    calls = []
    hook = LowRankLinear.forward
    LowRankLinear.forward = staticmethod(lambda *a: calls.append(1) or hook(*a))
    try:
        layer(torch.randn(2, 31, 64))
        assert calls == []
        layer(torch.randn(2, 32, 64))
        assert calls == [1]
    finally:
        LowRankLinear.forward = staticmethod(hook)


@pytest.mark.parametrize("method", ["lora", "condlora"])
def test_torch_compile_full_graph_matches_eager(method):
    """torch.compile traces the adapted model in one graph (no breaks) and gives eager's outputs and grads."""
    model = apply_adapter(tiny_bert(), AdapterConfig(method=method, r=4, target_modules=["query", "value"]))
    no_dropout(model)
    perturb(model)
    ids = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(3))
    ref_out, ref_grads = grads_after_step(model, ids, fast=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    model.zero_grad(set_to_none=True)
    out = compiled(input_ids=ids).logits
    out.float().pow(2).sum().backward()
    torch.testing.assert_close(out.detach(), ref_out)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)
