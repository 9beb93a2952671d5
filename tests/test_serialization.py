"""save/load round-trips, the exact saved key set, shape fingerprints and exact export to real PEFT."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from condlora import (
    AdapterConfig,
    AdapterLoadError,
    apply_adapter,
    export_peft_lora,
    load_adapter,
    save_adapter,
)
from conftest import MODELS, VARIANTS, adapter_config, logits, perturb, tiny_bert, tiny_llama


def trained(build, method, train_a, targets=("query", "value"), **kw):
    """A model with a non-zero adapter (and a changed head when saved)."""
    cfg = adapter_config(method, r=4, target_modules=list(targets), train_a=train_a, **kw)
    model = apply_adapter(build(), cfg)
    perturb(model)
    return model


@pytest.mark.parametrize(("method", "train_a"), VARIANTS)
def test_round_trip_under_a_different_seed(tmp_path, method, train_a, ids):
    model = trained(tiny_bert, method, train_a, modules_to_save=["classifier"])
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
        for n, p in model.named_parameters():
            if not p.requires_grad and ("lora_A" in n or "theta_A" in n):
                p.mul_(-1.5)  # a frozen A that a seed could not regenerate
    expected = logits(model, ids)
    save_adapter(model, tmp_path)
    torch.manual_seed(999)
    fresh = tiny_bert()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, ids), expected, atol=1e-6, rtol=1e-6)
    assert fresh.condlora_config.to_dict() == model.condlora_config.to_dict()


def test_default_form_is_general_and_saved_auto_adapters_keep_the_paper_form(tmp_path, ids):
    assert AdapterConfig().cond_form == "general"
    model = trained(tiny_bert, "condlora-auto", True)
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny_bert(), tmp_path)  # saved with "auto", the earlier default
    assert {t["form"] for t in loaded.condlora_config.module_types.values()} == {"paper"}
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), atol=0, rtol=0)


def test_saved_keys_are_exact(tmp_path):
    save_adapter(trained(tiny_bert, "condlora", False, modules_to_save=["classifier"]), tmp_path / "c")
    assert set(load_file(tmp_path / "c" / "adapter_model.safetensors")) == {
        "base_model.model.condlora_generators.bert_encoder_layer_attention_self_query.theta_A",
        "base_model.model.condlora_generators.bert_encoder_layer_attention_self_query.theta_B",
        "base_model.model.condlora_generators.bert_encoder_layer_attention_self_value.theta_A",
        "base_model.model.condlora_generators.bert_encoder_layer_attention_self_value.theta_B",
        "base_model.model.classifier.weight", "base_model.model.classifier.bias",
    }
    save_adapter(trained(tiny_bert, "lora", True), tmp_path / "l")
    assert set(load_file(tmp_path / "l" / "adapter_model.safetensors")) == {
        f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
        for i in (0, 1) for m in ("query", "value") for ab in "AB"
    }
    saved = json.loads((tmp_path / "c" / "adapter_config.json").read_text())["condlora"]
    assert saved["library_version"] == "0.1.0" and saved["method"] == "condlora"
    assert saved["module_types"]["bert.encoder.layer.*.attention.self.query"]["form"] == "general"  # the default form
    assert saved["fingerprint"]["bert.encoder.layer.0.attention.self.value"] == [32, 32]


@pytest.mark.parametrize("with_head", [True, False], ids=["head-saved", "head-not-saved"])
@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(("method", "train_a"), VARIANTS)
def test_export_loads_in_real_peft(tmp_path, arch, method, train_a, with_head, ids):
    build, targets = MODELS[arch]
    classifier = arch in ("bert", "roberta", "distilbert")
    save = ["classifier"] if classifier and with_head else None
    model = trained(build, method, train_a, targets, modules_to_save=save)
    if classifier:  # a head that differs from the fresh base's: PEFT must load it from the export
        with torch.no_grad():
            for p in model.classifier.parameters():
                p.add_(0.5)
    expected = logits(model, ids)
    export_peft_lora(model, tmp_path)
    torch.manual_seed(1234)
    peft_model = PeftModel.from_pretrained(build(), tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, ids), expected, atol=1e-5, rtol=1e-5)


def test_export_is_byte_reproducible_with_sorted_targets(tmp_path):
    model = trained(tiny_llama, "condlora", True, ("v_proj", "q_proj", "k_proj"))
    export_peft_lora(model, tmp_path / "a")
    export_peft_lora(model, tmp_path / "b")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    targets = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets) and len(targets) == 6


def test_load_onto_other_shapes_names_first_mismatch(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    save_adapter(trained(tiny_bert, "condlora", True), tmp_path)
    other = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))
    with pytest.raises(AdapterLoadError, match="bert.encoder.layer.0.attention.self.query is 48x48"):
        load_adapter(other, tmp_path)
    assert not hasattr(other, "condlora_config")


def test_load_onto_other_architecture(tmp_path):
    save_adapter(trained(tiny_bert, "lora", True), tmp_path)
    with pytest.raises(AdapterLoadError):
        load_adapter(tiny_llama(), tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "adapter_model.safetensors").unlink(), "not found"),
        (lambda d: (d / "adapter_config.json").unlink(), "not an adapter folder"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(
            (d / "adapter_model.safetensors").read_bytes()[:100]), "not a readable safetensors"),
        (lambda d: (d / "adapter_config.json").write_text("{oops"), "not valid JSON"),
        (lambda d: _edit_config(d, extra=1), "unknown adapter config field"),
        (lambda d: _edit_config(d, format_version=7), "newer"),
        (lambda d: _edit_config(d, r="x"), "r must be"),
        (lambda d: _edit_tensors(d, lambda t: {k: v[:, :1] if "theta_A" in k else v for k, v in t.items()}),
         "shape"),
        (lambda d: _edit_tensors(d, lambda t: {k: v.to(torch.int32) for k, v in t.items()}), "floating"),
        (lambda d: _edit_tensors(d, lambda t: dict(list(t.items())[1:])), "missing"),
    ],
)
def test_hostile_adapter_folders(tmp_path, damage, message):
    save_adapter(trained(tiny_bert, "condlora", True), tmp_path)
    damage(tmp_path)
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterLoadError, match=message):
        load_adapter(model, tmp_path)
    assert not hasattr(model, "condlora_config")
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def _edit_config(folder, **changes):
    data = json.loads((folder / "adapter_config.json").read_text())
    data["condlora"].update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(data))


def _edit_tensors(folder, edit):
    file = folder / "adapter_model.safetensors"
    save_file({k: v.contiguous() for k, v in edit(load_file(file)).items()}, file)


def test_copy_weights_checks_everything_before_copying_anything():
    from condlora.runner.checkpoint import load_trainable
    from condlora.serialization import copy_weights

    targets = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    good = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    bad = [({"a": good["a"]}, "missing b"), ({**good, "c": torch.ones(1)}, "unexpected c"),
           ({**good, "b": torch.ones(5)}, r"b has shape \(5,\), expected \(4,\)"),
           ({**good, "b": torch.full((4,), float("nan"))}, "b must hold finite")]
    for tensors, msg in bad:
        with pytest.raises(AdapterLoadError, match=msg):
            copy_weights(targets, tensors, "f.safetensors", expected="the run")
        assert not any(t.any() for t in targets.values())
    copy_weights(targets, {k: v.double() for k, v in good.items()}, "f")
    assert all(torch.equal(t, good[k]) and t.dtype == torch.float32 for k, t in targets.items())
    model = torch.nn.Linear(3, 2)
    with pytest.raises(AdapterLoadError, match=r"^best does not match this run's trainable parameters: missing bias$"):
        load_trainable(model, {"weight": torch.ones(2, 3)}, "best")
