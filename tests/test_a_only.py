"""A-only adapters (`train_b=False`): frozen seeded B / Θ_B, A / Θ_A trained from zero."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from condlora import (
    AdapterConfig,
    ConfigError,
    adapter_layers,
    apply_adapter,
    count_parameters,
    export_peft_lora,
    load_adapter,
    merge_adapter,
    merge_and_unload,
    save_adapter,
    unmerge_adapter,
)
from condlora.layers import base_weight, draw_matrix, module_seed, set_fast_path
from condlora.serialization import read_config
from conftest import MODELS, logits, moved_after_sgd, perturb, tiny_bert, tiny_llama

ADAPTER_KINDS = ["lora", "condlora"]
BERT_QV = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
GEN = "condlora_generators.bert_encoder_layer_attention_self_"


def a_only(build, method, targets=("query", "value"), **kw):
    """`build()` with an A-only adapter of rank 4."""
    return apply_adapter(build(), AdapterConfig(method=method, r=4, target_modules=list(targets), train_b=False,
                                                **kw))




def frozen_b(model):
    """Copies of every frozen B / Θ_B by parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n or "theta_B" in n}


def test_exact_trainable_names_and_counts():
    lora = a_only(tiny_bert, "lora", modules_to_save=["classifier"])
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {
        *(f"{m}.lora_A" for m in BERT_QV), "classifier.weight", "classifier.bias"}
    head = 2 * 32 + 2  # classifier: 32 -> 2 labels
    assert count_parameters(lora) == {"adapter": 4 * 4 * 32, "other": head, "total": 4 * 4 * 32 + head}
    by_layer = count_parameters(lora, other=lambda name: ".layer.1." in name)  # a caller's own split
    assert by_layer == {"adapter": 2 * 4 * 32 + head, "other": 2 * 4 * 32, "total": 4 * 4 * 32 + head}
    cond = a_only(tiny_bert, "condlora")
    assert {n for n, p in cond.named_parameters() if p.requires_grad} == {GEN + "query.theta_A",
                                                                           GEN + "value.theta_A"}
    assert count_parameters(cond) == {"adapter": 2 * 4 * 32, "other": 0, "total": 2 * 4 * 32}


def test_counts_on_rectangular_layers():
    targets = ["q_proj", "k_proj", "down_proj"]  # 32 -> 32, 32 -> 16 (general form), 48 -> 32 (general form)
    lora = a_only(tiny_llama, "lora", targets)
    assert count_parameters(lora)["adapter"] == 2 * 4 * (32 + 32 + 48)  # r · d_in per layer
    cond = a_only(tiny_llama, "condlora", targets)
    assert count_parameters(cond)["adapter"] == 4 * (32 + 16 + 32)  # Θ_A: r × d_in (paper), r × d_out (general)


def test_frozen_b_is_a_seeded_orthonormal_draw_apart_from_a():
    model = a_only(tiny_bert, "lora", seed=3)
    for name, layer in adapter_layers(model):
        b = layer.lora_B.detach()
        assert torch.equal(b, draw_matrix(32, 4, "orthogonal", module_seed(3, name, "B")))
        torch.testing.assert_close(b.T @ b, torch.eye(4))  # orthonormal columns
        assert not torch.allclose(b, draw_matrix(32, 4, "orthogonal", module_seed(3, name)))
        assert torch.equal(layer.lora_A, torch.zeros(4, 32))
    assert module_seed(3, "x") != module_seed(3, "x", "B")
    gauss = a_only(tiny_bert, "lora", seed=3, init_b="gaussian")
    assert not torch.allclose(next(adapter_layers(gauss))[1].lora_B, next(adapter_layers(model))[1].lora_B)
    cond = a_only(tiny_bert, "condlora", cond_form="paper")
    for gen in cond.condlora_generators.values():
        theta_b = gen.theta_B.detach()  # paper form: r × d_in, with orthonormal rows
        torch.testing.assert_close(theta_b @ theta_b.T, torch.eye(4))
        assert torch.equal(gen.theta_A, torch.zeros(4, 32))


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_identity_at_init_then_differs(arch, method, ids):
    build, targets = MODELS[arch]
    base = build()
    model = a_only(build, method, targets)
    assert all(p.abs().sum() > 0 for p in frozen_b(model).values())
    assert torch.equal(logits(model, ids), logits(base, ids))
    perturb(model, "A")
    assert not torch.allclose(logits(model, ids), logits(base, ids), atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_only_a_and_head_move(method, ids):
    model = a_only(tiny_bert, method, modules_to_save=["classifier"])
    moved, before = moved_after_sgd(model, ids)
    assert moved == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_A" in n or "theta_A" in n or n.startswith("classifier.") for n in moved)
    assert all(torch.equal(p, before[n]) for n, p in frozen_b(model).items())


@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_fast_path_gradients_match_reference(method, ids):
    model = a_only(tiny_bert, method)
    perturb(model, "A")
    grads = []
    for fast in (True, False):
        set_fast_path(model, fast)
        model.zero_grad()
        model(input_ids=ids).logits.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_round_trip_under_a_different_seed(tmp_path, method, ids):
    model = a_only(tiny_bert, method, modules_to_save=["classifier"])
    perturb(model, "A")
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
        for n, p in model.named_parameters():
            if "lora_B" in n or "theta_B" in n:
                p.mul_(-1.5)  # a frozen B that a seed could not regenerate
    expected, saved_b = logits(model, ids), frozen_b(model)
    save_adapter(model, tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for n, b in saved_b.items():  # PEFT names: LoRA's matrices are saved as '<layer>.lora_B.weight'
        assert torch.equal(saved["base_model.model." + n + (".weight" if method == "lora" else "")], b)
    fresh = tiny_bert()
    torch.manual_seed(999)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, ids), expected, atol=1e-6, rtol=1e-6)
    assert all(torch.equal(p, saved_b[n]) for n, p in frozen_b(fresh).items())
    assert all(not p.requires_grad for p in frozen_b(fresh).values())
    assert fresh.condlora_config.to_dict() == model.condlora_config.to_dict()
    assert read_config(tmp_path).train_b is False


def test_config_saved_before_train_b_loads_with_defaults(tmp_path, ids):
    model = apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=4))
    perturb(model, "A")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    expected = logits(model, ids)
    save_adapter(model, tmp_path)
    file = tmp_path / "adapter_config.json"
    data = json.loads(file.read_text())
    del data["condlora"]["train_b"], data["condlora"]["init_b"]
    file.write_text(json.dumps(data))
    cfg = read_config(tmp_path)
    assert cfg.train_b is True and cfg.init_b == "orthogonal"
    fresh = load_adapter(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(fresh, ids), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_export_loads_in_real_peft(tmp_path, arch, method, ids):
    build, targets = MODELS[arch]
    save = ["classifier"] if arch in ("bert", "roberta", "distilbert") else None
    model = a_only(build, method, targets, modules_to_save=save)
    perturb(model, "A")
    expected = logits(model, ids)
    export_peft_lora(model, tmp_path)
    torch.manual_seed(1234)
    peft_model = PeftModel.from_pretrained(build(), tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, ids), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_merge_equivalence(arch, method, ids):
    build, targets = MODELS[arch]
    model = a_only(build, method, targets)
    perturb(model, "A")
    before = {n: base_weight(layer.base).clone() for n, layer in adapter_layers(model)}
    deltas = {n: layer.delta_weight().detach().clone() for n, layer in adapter_layers(model)}
    assert all(d.abs().sum() > 0 for d in deltas.values())
    out = logits(model, ids)
    merge_adapter(model)
    torch.testing.assert_close(logits(model, ids), out, atol=1e-5, rtol=1e-5)
    for n, layer in adapter_layers(model):
        torch.testing.assert_close(base_weight(layer.base), before[n] + deltas[n])
    unmerge_adapter(model)
    assert all(torch.equal(base_weight(layer.base), before[n]) for n, layer in adapter_layers(model))
    plain = merge_and_unload(model)
    assert not list(adapter_layers(plain)) and not hasattr(plain, "condlora_generators")
    torch.testing.assert_close(logits(plain, ids), out, atol=1e-5, rtol=1e-5)


def test_nothing_to_train_is_a_config_error():
    with pytest.raises(ConfigError, match="train_a and train_b are both false"):
        AdapterConfig(train_a=False, train_b=False)
    with pytest.raises(ConfigError, match="train_a and train_b"):
        AdapterConfig.from_dict({"method": "lora", "train_a": False, "train_b": False})


@pytest.mark.parametrize(("field", "value"), [("train_b", "no"), ("init_b", "zeros")])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        AdapterConfig(**{field: value})


def test_resuming_into_an_adapter_that_trains_the_other_matrix_is_refused(tmp_path):
    from condlora.errors import AdapterLoadError
    from condlora.serialization import load_adapter_state

    save_adapter(apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=4)), tmp_path / "both")
    a_only = apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=4, train_b=False))
    with pytest.raises(AdapterLoadError, match="differs from this model's in train_b"):
        load_adapter_state(a_only, tmp_path / "both")
