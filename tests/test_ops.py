"""Batched CondLoRA generation (`ops.GenerateAll`, `ABGenerator.begin_forward`) against the per-layer path."""

import copy
import pickle

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from condlora import adapter_layers, apply_adapter, merge_and_unload
from condlora import ops as ops_module
from condlora.inject import begin_generation
from condlora.layers import set_fast_path
from condlora.ops import GenerateAll, generate_ab
from conftest import adapter_config, tiny_bert, tiny_llama
from test_fastpath import no_dropout, perturb

MODELS = {"bert": (tiny_bert, ["query", "value"]), "llama": (tiny_llama, ["q_proj", "k_proj", "v_proj", "up_proj"])}


def set_batched(model, enabled: bool) -> None:
    """Batched generation on (on this CPU too) or off."""
    for gen in model.condlora_generators.values():
        gen.batched, gen.per_layer_devices = enabled, ()


def weights(form: str, n: int = 3, r: int = 2, seed: int = 0):
    """n random W0 (7 x 5, or 6 x 6 for the paper form) and Θ_A, Θ_B in float64."""
    g = torch.Generator().manual_seed(seed)
    d_out, d_in = (6, 6) if form == "paper" else (7, 5)
    w0s = [torch.randn(d_out, d_in, dtype=torch.float64, generator=g) for _ in range(n)]
    theta_a = torch.randn(r, d_in if form == "paper" else d_out, dtype=torch.float64, generator=g)
    theta_b = torch.randn(*((r, d_in) if form == "paper" else (d_in, r)), dtype=torch.float64, generator=g)
    return w0s, theta_a, theta_b


@pytest.mark.parametrize("form", ["paper", "general"])
@pytest.mark.parametrize(("train_a", "train_b"), [(True, True), (False, True), (True, False)])
def test_generate_all_is_the_per_layer_formula(form, train_a, train_b):
    w0s, theta_a, theta_b = weights(form)
    theta_a.requires_grad_(train_a)
    theta_b.requires_grad_(train_b)
    outs = GenerateAll.apply(theta_a, theta_b, form, 0.5, *w0s)
    for i, w0 in enumerate(w0s):
        a, b = generate_ab(theta_a, theta_b, w0, form)
        torch.testing.assert_close(outs[i], a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(outs[len(w0s) + i], 0.5 * b, rtol=1e-12, atol=1e-12)
        assert (outs[i].requires_grad, outs[len(w0s) + i].requires_grad) == (train_a, train_b)

    def used(ta, tb):  # the differentiable outputs, one layer's A left unused
        out = GenerateAll.apply(ta, tb, form, 0.5, *w0s)
        return tuple(o for i, o in enumerate(out) if o.requires_grad and i != 1)

    assert torch.autograd.gradcheck(used, (theta_a, theta_b))


def counted(fn, calls: list, tag: str):
    """`fn`, appending `tag` to `calls` on every call."""
    def wrapper(*args):
        calls.append(tag)
        return fn(*args)
    return wrapper


def train_step(model, ids, labels, steps: int = 1):
    """Outputs and gradients after `steps` forward + backward passes (gradients accumulate)."""
    model.zero_grad(set_to_none=True)
    for _ in range(steps):
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_close_relative(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for name, ref in want.items():
        assert (got[name] - ref).abs().max() <= tol * ref.abs().max(), name


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(("method", "train_a"), [("condlora", True), ("condlora-auto", True), ("condlora", False)])
@pytest.mark.parametrize(("fast", "dtype"), [(True, torch.float32), (False, torch.float32), (True, torch.float64)])
def test_batched_step_matches_per_layer(arch, method, train_a, fast, dtype, monkeypatch):
    build, targets = MODELS[arch]
    model = apply_adapter(build().to(dtype), adapter_config(method, r=4, target_modules=targets, train_a=train_a))
    no_dropout(model)
    perturb(model)
    model.train()
    set_fast_path(model, fast)
    ids = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(3))  # 80 tokens: fast path
    labels = torch.tensor([0, 1]) if arch == "bert" else ids
    set_batched(model, False)
    want_out, want = train_step(model, ids, labels, steps=2)
    set_batched(model, True)
    calls = []
    monkeypatch.setattr(GenerateAll, "apply", counted(GenerateAll.apply, calls, "all"))
    for where in ("condlora.layers", "condlora.ops"):
        monkeypatch.setattr(f"{where}.generate_ab", counted(ops_module.generate_ab, calls, "one"))
    got_out, got = train_step(model, ids, labels, steps=2)
    assert calls == ["all"] * 2 * len(model.condlora_generators)  # once per module type and forward, no layer alone
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    assert (got_out - want_out).abs().max() <= tol * want_out.abs().max()
    assert_close_relative(got, want, tol)
    theta_a = [p for n, p in model.named_parameters() if n.endswith("theta_A")]
    assert all((p.grad is None) != train_a for p in theta_a)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    """Generation runs before the forward, outside the checkpointed layers: recomputing a layer reuses it."""
    build, targets = MODELS["llama"]
    model = apply_adapter(build(), adapter_config("condlora", r=4, target_modules=targets)).train()
    set_batched(model, True)
    perturb(model)
    ids = torch.randint(1, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    want_out, want = train_step(model, ids, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    got_out, got = train_step(model, ids, ids)
    torch.testing.assert_close(got_out, want_out)
    assert_close_relative(got, want, 2e-5)


def test_a_layer_called_alone_after_an_update_generates_afresh(ids):
    """A round is only served while Θ and W0 are what it was generated from."""
    model = apply_adapter(tiny_bert(), adapter_config("condlora", r=4, target_modules=["query", "value"])).train()
    set_batched(model, True)
    perturb(model)
    model(input_ids=ids)  # leaves this forward's generation behind
    with torch.no_grad():
        for gen in model.condlora_generators.values():
            gen.theta_B.mul_(2.0)
    layer = dict(adapter_layers(model))["bert.encoder.layer.1.attention.self.query"]
    x = torch.randn(2, 5, 32)
    a, b = layer.generator.generate(layer.w0())
    want = layer.base(x) + x @ a.T @ b.T * layer.scaling
    torch.testing.assert_close(layer(x), want)


def test_compiled_batched_step_matches_eager(ids):
    """The batched generation under torch.compile (AOT autograd traces GenerateAll both ways)."""
    model = apply_adapter(tiny_bert(), adapter_config("condlora-auto", r=4, target_modules=["query", "value"]))
    no_dropout(model)
    perturb(model)
    set_batched(model, True)
    model.train()
    labels = torch.tensor([0, 1, 1])
    want_out, want = train_step(model, ids, labels)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got_out, got = train_step(compiled, ids, labels)
    torch.testing.assert_close(got_out, want_out)
    assert_close_relative({n.removeprefix("_orig_mod."): g for n, g in got.items()}, want, 2e-5)


def matmuls(model, ids) -> int:
    """Matrix products (mm, addmm, bmm) run by one training step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids).logits.sum().backward()
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))


@pytest.mark.parametrize("form", ["condlora", "condlora-auto"])
def test_generation_products_do_not_grow_with_depth(form, ids):
    """Per-layer: 2 products per layer forward and 2 backward; batched: at most 2 per module type each way."""
    model = apply_adapter(tiny_bert(), adapter_config(form, r=4, target_modules=["query", "value"])).train()
    set_fast_path(model, False)
    layers, types = len(list(adapter_layers(model))), len(model.condlora_generators)
    set_batched(model, False)
    per_layer = matmuls(model, ids)
    set_batched(model, True)
    batched = matmuls(model, ids)
    assert per_layer - batched >= 4 * layers - 4 * types > 0


def test_copies_keep_their_own_layers_and_unloading_removes_the_hook(ids):
    model = apply_adapter(tiny_bert(), adapter_config("condlora", r=4, target_modules=["query", "value"])).train()
    set_batched(model, True)
    model(input_ids=ids)  # leaves a generation (tensors with gradient history) behind: not copied
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        layers = dict(adapter_layers(clone))
        for gen in clone.condlora_generators.values():
            assert all(layer is layers[name] for layer, name in zip(gen._layers, [
                n for n, m in layers.items() if m.generator is gen], strict=True))
        clone(input_ids=ids).logits.sum().backward()
        assert all(p.grad is not None for p in clone.condlora_generators.parameters() if p.requires_grad)
    assert begin_generation in model._forward_pre_hooks.values()
    merge_and_unload(model)
    assert begin_generation not in model._forward_pre_hooks.values()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_cuda_defaults_batch_the_generation_and_match_per_layer(dtype, tol, monkeypatch):
    """On a GPU the generation is batched and the layers run the reference formula (no fast path) by default."""
    model = apply_adapter(tiny_bert().to("cuda", dtype), adapter_config("condlora-auto", r=4,
                                                                       target_modules=["query", "value"]))
    no_dropout(model)
    perturb(model)
    model.train()
    ids = torch.randint(1, 100, (2, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    labels = torch.tensor([0, 1], device="cuda")
    calls = []
    monkeypatch.setattr(GenerateAll, "apply", counted(GenerateAll.apply, calls, "all"))
    monkeypatch.setattr(ops_module.LowRankLinear, "apply", counted(ops_module.LowRankLinear.apply, calls, "fast"))
    got_out, got = train_step(model, ids, labels)
    assert calls == ["all"] * len(model.condlora_generators)
    for gen in model.condlora_generators.values():
        gen.batched = False
    want_out, want = train_step(model, ids, labels)
    assert (got_out - want_out).abs().max() <= tol * want_out.abs().max()
    assert_close_relative(got, want, tol)


@pytest.mark.parametrize("form", ["paper", "general"])
def test_batched_generation_under_autocast_matches_per_layer(form):
    """Under autocast (bf16, as `--precision bf16` trains on a GPU) the batched path trains like the per-layer one:
    fp32 gradients for Θ, close to the per-layer path's."""
    grads = {}
    for batched in (True, False):
        torch.manual_seed(0)
        model = apply_adapter(tiny_bert(), adapter_config(method="condlora", cond_form=form))
        no_dropout(model)
        perturb(model)
        set_batched(model, batched)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.arange(12).reshape(2, 6)).logits
        out.float().pow(2).sum().backward()
        grads[batched] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and "theta" in n}
    assert grads[True] and grads[True].keys() == grads[False].keys()
    for name, g in grads[True].items():
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, grads[False][name], rtol=0.05, atol=0.05 * grads[False][name].abs().max().item())
