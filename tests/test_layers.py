"""Adapter layers and injection: identity at init, merge equivalence, trainable sets, sharing, counts."""

import pytest
import torch
from torch import nn

from condlora import (
    AdapterConfig,
    CondLoRALinear,
    ConfigError,
    LoRALinear,
    TargetError,
    adapter_layers,
    apply_adapter,
    count_parameters,
    merge_adapter,
    merge_and_unload,
    unmerge_adapter,
)
from condlora.layers import ABGenerator, InitSpec, base_weight, draw_matrix, module_seed
from conftest import (
    MODELS,
    VARIANTS,
    adapter_config,
    logits,
    moved_after_sgd,
    perturb,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(("method", "train_a"), VARIANTS)
def test_identity_at_init_then_differs(arch, method, train_a, ids):
    build, targets = MODELS[arch]
    base = build()
    model = apply_adapter(build(), adapter_config(method, r=4, target_modules=targets, train_a=train_a))
    assert torch.equal(logits(model, ids), logits(base, ids))
    perturb(model)
    assert not torch.allclose(logits(model, ids), logits(base, ids), atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(("method", "train_a"), VARIANTS)
def test_merge_equivalence(arch, method, train_a, ids):
    build, targets = MODELS[arch]
    model = apply_adapter(build(), adapter_config(method, r=4, target_modules=targets, train_a=train_a))
    perturb(model)
    before = {n: base_weight(layer.base).clone() for n, layer in adapter_layers(model)}
    deltas = {n: layer.delta_weight().detach().clone() for n, layer in adapter_layers(model)}
    out = logits(model, ids)
    merge_adapter(model)
    merged = logits(model, ids)
    torch.testing.assert_close(merged, out, atol=1e-5, rtol=1e-5)
    for n, layer in adapter_layers(model):
        torch.testing.assert_close(base_weight(layer.base), before[n] + deltas[n])
    snapshot = {n: base_weight(layer.base).clone() for n, layer in adapter_layers(model)}
    merge_adapter(model)  # second merge is a no-op
    assert all(torch.equal(base_weight(layer.base), snapshot[n]) for n, layer in adapter_layers(model))
    unmerge_adapter(model)
    assert all(torch.equal(base_weight(layer.base), before[n]) for n, layer in adapter_layers(model))
    torch.testing.assert_close(logits(model, ids), out, atol=1e-6, rtol=1e-6)
    plain = merge_and_unload(model)
    assert not list(adapter_layers(plain)) and not hasattr(plain, "condlora_generators")
    assert not any(isinstance(m, CondLoRALinear | LoRALinear) for m in plain.modules())
    torch.testing.assert_close(logits(plain, ids), out, atol=1e-5, rtol=1e-5)


def test_exact_trainable_names():
    cfg = AdapterConfig(method="condlora", r=4, modules_to_save=["classifier"])
    model = apply_adapter(tiny_bert(), cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {
        "condlora_generators.bert_encoder_layer_attention_self_query.theta_A",
        "condlora_generators.bert_encoder_layer_attention_self_query.theta_B",
        "condlora_generators.bert_encoder_layer_attention_self_value.theta_A",
        "condlora_generators.bert_encoder_layer_attention_self_value.theta_B",
        "classifier.weight", "classifier.bias",
    }
    frozen_a = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=4, train_a=False))
    assert {n for n, p in frozen_a.named_parameters() if p.requires_grad} == {
        "condlora_generators.bert_encoder_layer_attention_self_query.theta_B",
        "condlora_generators.bert_encoder_layer_attention_self_value.theta_B",
    }
    lora = apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=4, train_a=False))
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {
        f"bert.encoder.layer.{i}.attention.self.{m}.lora_B" for i in (0, 1) for m in ("query", "value")
    }


@pytest.mark.parametrize(("method", "train_a"), VARIANTS)
def test_only_adapter_and_head_move(method, train_a, ids):
    model = apply_adapter(tiny_bert(), adapter_config(method, r=4, train_a=train_a,
                                                     modules_to_save=["classifier"]))
    perturb(model)  # with B = 0, A's first gradients are too small to move it in fp32
    moved, before = moved_after_sgd(model, ids)
    for n, p in model.named_parameters():
        assert (n in moved) == p.requires_grad, n
    frozen_a = [n for n, p in model.named_parameters() if ("lora_A" in n or "theta_A" in n) and not train_a]
    assert all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in frozen_a)


def test_generators_are_shared_and_stored_once():
    model = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=4))
    layers = dict(adapter_layers(model))
    q = [layer for n, layer in layers.items() if n.endswith("query")]
    assert len(q) == 2 and q[0].generator is q[1].generator
    assert q[0].generator is model.condlora_generators["bert_encoder_layer_attention_self_query"]
    keys = [k for k in model.state_dict() if "theta" in k]
    assert len(keys) == 4


def test_gpt2_module_types_keep_attn_and_mlp_apart():
    model = apply_adapter(tiny_gpt2(), AdapterConfig(method="condlora", r=4, cond_form="auto",
                                                     target_modules=["c_attn", "attn.c_proj", "mlp.c_proj"]))
    types = model.condlora_config.module_types
    assert set(types) == {"transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj",
                          "transformer.h.*.mlp.c_proj"}
    assert types["transformer.h.*.attn.c_attn"]["form"] == "general"  # fused 32 -> 96
    assert types["transformer.h.*.attn.c_proj"]["form"] == "paper"
    assert (types["transformer.h.*.mlp.c_proj"]["d_in"], types["transformer.h.*.mlp.c_proj"]["d_out"]) == (128, 32)


def _roberta_base():
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(RobertaConfig())


@pytest.mark.parametrize(
    ("method", "train_a", "expected"),
    [("condlora", True, 24_576), ("lora", True, 294_912), ("condlora", False, 12_288), ("lora", False, 147_456)],
)
def test_roberta_base_counts(method, train_a, expected):
    model = apply_adapter(_roberta_base(), AdapterConfig(method=method, r=8, train_a=train_a))
    assert count_parameters(model) == {"adapter": expected, "other": 0, "total": expected}


def test_condlora_count_does_not_grow_with_depth():
    from transformers import BertConfig, BertModel

    counts = []
    for depth in (1, 3):
        cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
                         intermediate_size=48)
        model = apply_adapter(BertModel(cfg), AdapterConfig(method="condlora", r=4))
        counts.append(count_parameters(model)["adapter"])
    assert counts == [2 * (32 + 32) * 4] * 2


def test_paper_form_formula():
    model = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=4, cond_form="paper"))
    perturb(model)
    name, layer = next(adapter_layers(model))
    w0 = layer.base.weight
    a, b = layer.lora_AB()
    torch.testing.assert_close(a, layer.generator.theta_A @ w0.T)
    torch.testing.assert_close(b, w0 @ layer.generator.theta_B.T)


def test_general_form_reuses_base_output():
    model = apply_adapter(tiny_llama(), AdapterConfig(method="condlora", r=4, target_modules=["k_proj"]))
    _, layer = next(adapter_layers(model))
    assert layer.generator.form == "general" and layer.generator.theta_A.shape == (4, layer.d_out)
    x = torch.randn(5, layer.d_in)
    a, _ = layer.lora_AB()
    torch.testing.assert_close(x @ a.T, (x @ layer.base.weight.T) @ layer.generator.theta_A.T)


def test_layers_take_their_initialisation_as_one_settings_object():
    init = InitSpec(train_a=False, init_a="gaussian", seed=3)
    layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=4, init=init, name="x")
    assert torch.equal(layer.lora_A, draw_matrix(4, 16, "gaussian", module_seed(3, "x")))
    assert not layer.lora_A.requires_grad and layer.lora_B.requires_grad and not layer.lora_B.any()
    gen = ABGenerator(16, 8, 4, "general", init=InitSpec(train_b=False, seed=3), name="t")
    assert torch.equal(gen.theta_B, draw_matrix(16, 4, "orthogonal", module_seed(3, "t", "B")))
    assert not gen.theta_A.any() and gen.theta_A.shape == (4, 8)
    cfg = AdapterConfig(train_b=False, init_b="kaiming", seed=9)
    assert InitSpec.from_config(cfg) == InitSpec(train_b=False, init_b="kaiming", seed=9)
    with pytest.raises(TypeError):  # settings are keyword-only: no positional booleans
        LoRALinear(nn.Linear(16, 8), 4, 4, 0.0, False)
    with pytest.raises(ValueError, match="cannot both be false"):
        InitSpec(train_a=False, train_b=False)


def test_dropout_only_on_adapter_branch():
    base = nn.Linear(16, 16)
    layer = LoRALinear(base, r=4, alpha=4, dropout=0.9)
    layer.train()
    x = torch.randn(8, 16)
    assert torch.equal(layer(x), base(x))  # B is zero: base input must not be dropped
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    torch.manual_seed(0)
    y1 = layer(x)
    torch.manual_seed(1)
    assert not torch.equal(y1, layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_eval_cache_invalidated_by_updates(ids):
    model = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=4))
    perturb(model)
    first = logits(model, ids)
    _, layer = next(adapter_layers(model))
    assert layer._cache is not None
    assert torch.equal(logits(model, ids), first)
    with torch.no_grad():
        model.condlora_generators["bert_encoder_layer_attention_self_query"].theta_B.mul_(2)
    second = logits(model, ids)
    assert not torch.allclose(second, first)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=ids).logits.sum().backward()
    opt.step()
    assert layer._cache is None
    model.eval()
    assert not torch.allclose(logits(model, ids), second)


def test_r_larger_than_dims():
    with pytest.raises(ConfigError, match="r=64 is larger than .*query"):
        apply_adapter(tiny_bert(), AdapterConfig(r=64))


def test_targets_matching_nothing_list_what_exists():
    with pytest.raises(TargetError, match="matched no module.*query.*value"):
        apply_adapter(tiny_bert(), AdapterConfig(target_modules=["q_proj"]))


def test_paper_form_on_rectangular_names_module():
    with pytest.raises(ConfigError, match="k_proj.*general"):
        apply_adapter(tiny_llama(), AdapterConfig(target_modules=["k_proj"], cond_form="paper"))


def test_apply_twice_is_an_error():
    model = apply_adapter(tiny_bert(), AdapterConfig())
    with pytest.raises(TargetError, match="already"):
        apply_adapter(model, AdapterConfig())


def test_regex_and_layers_select_modules():
    model = apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=2, target_modules=r".*\.(query|key)",
                                                     layers=[1]))
    assert [n for n, _ in adapter_layers(model)] == ["bert.encoder.layer.1.attention.self.query",
                                                     "bert.encoder.layer.1.attention.self.key"]


def test_non_linear_target_is_an_error():
    with pytest.raises(TargetError, match="LayerNorm"):
        apply_adapter(tiny_bert(), AdapterConfig(target_modules=["attention.output.LayerNorm"]))
