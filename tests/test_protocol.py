"""The training protocol of a fair study: one head setting for every method, the one-side-frozen and
general-form methods, early stopping (with resume) and length-grouped batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from condlora import AdapterConfig, apply_adapter
from condlora.cli import main as cli_main
from condlora.errors import ConfigError
from condlora.inject import get_config
from condlora.layers import draw_matrix, module_seed
from condlora.runner.batching import epoch_order
from condlora.runner.methods import RUN_METHODS, MethodSetup, setup_method
from condlora.runner.models import head_module_names, head_save_names
from condlora.runner.train import TrainConfig, train
from conftest import Killed, kill_at, logits, tiny_bert, tiny_distilbert, tiny_roberta
from glue_fixtures import make_tiny_model_dir, write_glue

TARGETS = ["query", "value"]
IDS = torch.tensor([[2, 7, 9, 11, 13, 3], [2, 20, 21, 22, 3, 0]])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    return {"model": str(make_tiny_model_dir(root / "model")),
            "glue": str(write_glue(root / "glue", n_train=40, n_dev=12, folders=["RTE"]))}


def config(tiny, out, **kw) -> TrainConfig:
    base = dict(task="rte", method="condlora", model=tiny["model"], glue_dir=tiny["glue"], output_dir=str(out),
                epochs=1, lr=1e-2, batch_size=8, max_length=32, quiet=True)
    return TrainConfig(**{**base, **kw})


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---- head setting -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "dense", "linear", "saved_linear"), [
    (tiny_bert, ["classifier", "bert.pooler"], ["classifier"], ["classifier"]),
    (tiny_roberta, ["classifier"], ["classifier.out_proj"], ["classifier"]),
    (tiny_distilbert, ["pre_classifier", "classifier"], ["classifier"], ["classifier", "pre_classifier"]),
])
def test_head_module_names(make, dense, linear, saved_linear):
    model = make()
    assert head_module_names(model, "dense") == dense and head_save_names(model, "dense") == dense
    assert head_module_names(model, "linear") == linear and head_save_names(model, "linear") == saved_linear
    with pytest.raises(ConfigError, match="head must be one of dense, linear; got 'nope'"):
        head_module_names(model, "nope")


@pytest.mark.parametrize("method", ["lora", "condlora", "head"])
def test_dense_head_trains_the_pooler_for_every_method(method):
    model = setup_method(tiny_bert(), MethodSetup(method, 4, 4.0, 0.0, TARGETS, 0, head="dense"))
    pooler = {n for n in trainable(model) if "pooler" in n}
    assert len(pooler) == 2 and all(n.endswith(("dense.weight", "dense.bias")) for n in pooler)
    model = setup_method(tiny_bert(), MethodSetup(method, 4, 4.0, 0.0, TARGETS, 0, head="linear"))
    assert not any("pooler" in n for n in trainable(model))


def test_peft_saves_and_reloads_the_trained_pooler(tmp_path):
    from peft import PeftModel

    model = setup_method(tiny_bert(), MethodSetup("lora", 4, 4.0, 0.0, TARGETS, 0, head="dense"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # a "trained" adapter, pooler and classifier
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert {"base_model.model.bert.pooler.dense.weight", "base_model.model.classifier.weight"} <= keys
    reloaded = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    assert not torch.allclose(logits(tiny_bert(), IDS), logits(model, IDS))
    torch.testing.assert_close(logits(reloaded, IDS), logits(model, IDS))


@pytest.mark.parametrize("method", ["lora", "condlora"])
def test_roberta_linear_head_trains_out_proj_only_and_saves_the_frozen_dense(tmp_path, method):
    model = setup_method(tiny_roberta(), MethodSetup(method, 4, 4.0, 0.0, TARGETS, 0, head="linear"))
    head = {n.replace("base_model.model.", "").replace("modules_to_save.default.", "")
            for n in trainable(model) if "classifier" in n}
    assert head == {"classifier.out_proj.weight", "classifier.out_proj.bias"}
    if method == "lora":
        model.save_pretrained(tmp_path)
    else:
        from condlora.serialization import save_adapter

        save_adapter(model, tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.classifier.dense.weight" in keys


# ---- the new methods ----------------------------------------------------------------------------------------

def test_methods_tuple():
    assert RUN_METHODS == ("lora", "condlora", "lora-frozen-a", "condlora-frozen-a", "lora-frozen-b",
                       "condlora-frozen-b", "condlora-general", "full", "head", "lora-r1", "lora-r2", "vera",
                       "vera-r1024", "fourierft")


def test_peft_lora_frozen_b_starts_as_identity_with_the_librarys_frozen_b():
    peft_model = setup_method(tiny_bert(), MethodSetup("lora-frozen-b", 8, 8.0, 0.0, TARGETS, 7, head="linear"))
    torch.testing.assert_close(logits(peft_model, IDS), logits(tiny_bert(), IDS), atol=0, rtol=0)
    ours = apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=8, alpha=8.0, target_modules=TARGETS,
                                                    train_b=False, seed=7, modules_to_save=["classifier"]))
    ours_layers = {n: m for n, m in ours.named_modules() if hasattr(m, "lora_B")}
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules()
                   if isinstance(getattr(m, "lora_B", None), torch.nn.ModuleDict)}
    assert ours_layers.keys() == peft_layers.keys() and len(ours_layers) == 4
    gen = torch.Generator().manual_seed(0)
    for name, layer in ours_layers.items():
        b, a = peft_layers[name].lora_B["default"].weight, peft_layers[name].lora_A["default"].weight
        assert torch.equal(b, layer.lora_B) and torch.equal(b, draw_matrix(32, 8, "orthogonal",
                                                                          module_seed(7, name, "B")))
        assert not b.requires_grad and a.requires_grad and not a.any()
        with torch.no_grad():  # the same trained-looking A in both
            new_a = torch.randn(a.shape, generator=gen)
            a.copy_(new_a)
            layer.lora_A.copy_(new_a)
    assert not torch.allclose(logits(peft_model, IDS), logits(tiny_bert(), IDS))
    torch.testing.assert_close(logits(peft_model, IDS), logits(ours, IDS), atol=1e-5, rtol=1e-5)


def test_condlora_frozen_b_is_the_librarys_train_b_false():
    model = setup_method(tiny_bert(), MethodSetup("condlora-frozen-b", 8, 8.0, 0.0, TARGETS, 3, head="linear"))
    ours = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=8, alpha=8.0, target_modules=TARGETS,
                                                    train_b=False, seed=3, cond_form="auto"))
    for key, gen in model.condlora_generators.items():
        assert gen.theta_A.requires_grad and not gen.theta_A.any() and not gen.theta_B.requires_grad
        assert torch.equal(gen.theta_B, ours.condlora_generators[key].theta_B)
    torch.testing.assert_close(logits(model, IDS), logits(tiny_bert(), IDS), atol=0, rtol=0)


@pytest.mark.parametrize("cond_form", ["auto", "paper", "general"])
def test_condlora_general_ignores_cond_form(cond_form):
    model = setup_method(tiny_bert(), MethodSetup("condlora-general", 8, 8.0, 0.0, TARGETS, 0, cond_form, "linear"))
    assert {t["form"] for t in get_config(model).module_types.values()} == {"general"}
    shapes = {n.rsplit(".", 1)[-1]: tuple(p.shape) for n, p in model.named_parameters() if "theta" in n}
    assert shapes == {"theta_A": (8, 32), "theta_B": (32, 8)}
    plain = setup_method(tiny_bert(), MethodSetup("condlora", 8, 8.0, 0.0, TARGETS, 0, cond_form, head="linear"))
    forms = {t["form"] for t in get_config(plain).module_types.values()}
    assert forms == ({"general"} if cond_form == "general" else {"paper"})


@pytest.mark.parametrize("method", ["lora-frozen-b", "condlora-frozen-b", "condlora-general"])
def test_new_methods_save_their_best_adapter(tiny, tmp_path, method):
    res = train(config(tiny, tmp_path, method=method))
    expected = ["best_adapter"] if method.startswith("lora") else ["best_adapter", "best_adapter_peft"]
    assert res["saved"] == expected and res["method"] == method
    tensors = load_file(str(tmp_path / "best_adapter" / "adapter_model.safetensors"))
    assert any("pooler" in k for k in tensors) and any("classifier" in k for k in tensors)
    if method == "lora-frozen-b":
        b_keys = [k for k in tensors if "lora_B" in k]
        assert len(b_keys) == 4 and all(tensors[k.replace("lora_B", "lora_A")].abs().sum() > 0 for k in b_keys)
        for key in b_keys:
            name = key.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
            assert torch.equal(tensors[key], draw_matrix(32, 8, "orthogonal", module_seed(0, name, "B")))


# ---- early stopping -----------------------------------------------------------------------------------------



STOP = dict(epochs=4, lr=1e-12, patience=2, group_by_length=True, seed=4)  # lr 1e-12: validation never improves


def test_patience_stops_early_and_records_it(tiny, tmp_path):
    res = train(config(tiny, tmp_path, **STOP))
    assert (res["stopped_early"], res["best_step"], res["epochs_run"], res["steps_run"]) == (True, 5, 3.0, 15)
    assert res["total_steps"] == 20 and res["patience"] == 2 and res["head"] == "dense"
    assert res["group_by_length"] is True
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["best"], r["bad_evals"]) for r in records] == [(5, True, 0), (10, False, 1), (15, False, 2)]
    full = train(config(tiny, tmp_path / "nopatience", **{**STOP, "patience": None}))
    assert (full["stopped_early"], full["epochs_run"], full["steps_run"]) == (False, 4.0, 20)
    last = train(config(tiny, tmp_path / "four", **{**STOP, "patience": 3}))  # patience runs out at the last step
    assert (last["stopped_early"], last["steps_run"]) == (False, 20)


@pytest.mark.parametrize("kill", [12, 15])
def test_resume_keeps_the_patience_counter(tiny, tmp_path, kill):
    ref = train(config(tiny, tmp_path / "ref", **STOP))
    with pytest.raises(Killed):
        train(config(tiny, tmp_path / "run", **STOP), on_step=kill_at(kill))
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["bad_evals"], state["stopped_early"]) == ((10, 1, False) if kill == 12
                                                                           else (15, 2, True))
    steps = []
    res = train(config(tiny, tmp_path / "run", resume=True, **STOP), on_step=steps.append)
    assert steps == ([11, 12, 13, 14, 15] if kill == 12 else [])
    for key in ("val_score", "test_score", "best_step", "stopped_early", "epochs_run", "test_metrics"):
        assert res[key] == ref[key], key
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


# ---- length-grouped batching --------------------------------------------------------------------------------

def _spread(lengths: np.ndarray, order: list[int], bs: int) -> float:
    return float(np.mean([np.ptp(lengths[order[i:i + bs]]) for i in range(0, len(order), bs)]))


def test_grouped_order_holds_every_example_once_in_homogeneous_batches():
    lengths = np.random.default_rng(0).integers(5, 128, size=1003)
    bs = 16
    grouped = epoch_order(lengths, bs, seed=1, epoch=0, group_by_length=True)
    plain = epoch_order(lengths, bs, seed=1, epoch=0)
    assert sorted(grouped) == list(range(1003)) and sorted(plain) == list(range(1003))
    assert _spread(lengths, grouped, bs) < 0.2 * _spread(lengths, plain, bs)
    widths = lambda order: sum(int(lengths[order[i:i + bs]].max()) for i in range(0, len(order), bs))  # noqa: E731
    assert widths(grouped) < 0.75 * widths(plain)  # less padding
    assert int(lengths[grouped[:bs]].max()) == lengths.max()  # the longest batch comes first
    assert grouped == epoch_order(lengths, bs, seed=1, epoch=0, group_by_length=True)
    assert grouped != epoch_order(lengths, bs, seed=1, epoch=1, group_by_length=True)
    assert grouped != epoch_order(lengths, bs, seed=2, epoch=0, group_by_length=True)
    gen = torch.Generator().manual_seed(1 * 1_000_003 + 0)  # without grouping: the order older runs had
    assert plain == torch.randperm(1003, generator=gen).tolist()


def test_grouped_order_keeps_batches_aligned_and_batch_order_shuffled():
    lengths = np.arange(100)
    order = epoch_order(lengths, 8, seed=0, epoch=0, group_by_length=True)
    batches = [order[i:i + 8] for i in range(0, 100, 8)]
    assert [len(b) for b in batches] == [8] * 12 + [4]
    tops = [int(lengths[b].max()) for b in batches[1:-1]]
    assert tops != sorted(tops, reverse=True) and tops != sorted(tops)  # not simply long to short
    assert epoch_order(lengths[:3], 8, seed=0, epoch=0, group_by_length=True) != []


# ---- settings and the command line ---------------------------------------------------------------------------

def test_older_runs_without_the_new_settings_match_head_linear(tiny, tmp_path):
    first = train(config(tiny, tmp_path, head="linear"))
    assert first["head"] == "linear" and first["head_params"] == 66
    cfg_file = tmp_path / "config.json"
    saved = json.loads(cfg_file.read_text())
    for key in ("head", "patience", "group_by_length"):
        del saved["run"][key]
    cfg_file.write_text(json.dumps(saved))
    assert train(config(tiny, tmp_path, head="linear")) == first
    with pytest.raises(Exception, match=r"different run \(head: 'linear' there, 'dense' now\)"):
        train(config(tiny, tmp_path))


@pytest.mark.parametrize(("flags", "message"), [
    (["--head", "nope"], "head must be one of dense, linear; got 'nope'"),
    (["--patience", "0"], "patience must be positive, got 0"),
])
def test_bad_settings_print_one_line_and_exit_2(tiny, tmp_path, capsys, flags, message):
    args = ["train", "--task", "rte", "--model", tiny["model"], "--glue-dir", tiny["glue"], "--output-dir",
            str(tmp_path), "--quiet", *flags]
    assert cli_main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"condlora train: error: {message}"]
    with pytest.raises(ConfigError):
        config(tiny, tmp_path, **({"head": "nope"} if flags[0] == "--head" else {"patience": 0}))


def test_help_lists_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "-h"])
    text = capsys.readouterr().out
    for word in ("--head", "--patience", "--group-by-length", "lora-frozen-b", "condlora-frozen-b",
                 "condlora-general"):
        assert word in text, word


@pytest.mark.slow
def test_minilm_alias_records_its_hub_id_in_adapters_and_exports(tmp_path):
    from condlora import export_peft_lora, save_adapter
    from condlora.runner.models import load_classifier

    model = apply_adapter(load_classifier("minilm", num_labels=2), AdapterConfig(r=2))
    save_adapter(model, tmp_path / "ours")
    export_peft_lora(model, tmp_path / "peft")
    for folder in ("ours", "peft"):
        cfg = json.loads((tmp_path / folder / "adapter_config.json").read_text())
        name = cfg.get("base_model_name_or_path") or cfg["condlora"]["base_model_name_or_path"]
        assert name == "sentence-transformers/all-MiniLM-L6-v2"
