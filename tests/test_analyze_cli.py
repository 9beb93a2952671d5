"""`condlora analyze` end to end on tiny saved models, with adapters saved by real peft and by condlora."""

import csv
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from condlora import AdapterConfig, apply_adapter, conversion_matrices, save_adapter, subspace_similarity
from condlora.analysis import similarity_matrix
from condlora.cli import main
from conftest import tiny_bert, tiny_gpt2
from test_analysis import few_steps

BERT_TYPES = ("bert_encoder_layer_attention_self_query", "bert_encoder_layer_attention_self_value")
KINDS = ("A", "B", "random_A", "random_B", "random_adapter_A", "random_adapter_B")


def type_files(keys):
    return {f"{k}{suffix}" for k in keys for suffix in (".json", ".csv", *(f"_{kind}.png" for kind in KINDS))}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    tiny_bert().save_pretrained(path)
    return path


def peft_adapter(base_dir, path, zero_b=False):
    """A LoRA adapter saved by real peft, with a random (non-zero) B."""
    from transformers import BertForSequenceClassification

    model = get_peft_model(BertForSequenceClassification.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and not zero_b:
                p.copy_(torch.randn(p.shape, generator=gen))
    model.save_pretrained(path)
    return path


def condlora_adapter(base_dir, path, ids, method="condlora"):
    """A condlora adapter (with a 2-label head) trained for a few steps on the saved base model."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(base_dir)
    cfg = AdapterConfig(method=method, r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    save_adapter(few_steps(apply_adapter(model, cfg), ids), path)
    return path


def run(*argv):
    return main(["analyze", *map(str, argv), "--quiet"])


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "-h"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--model", "--adapter", "--compare", "--output-dir", "--i", "--j"))


def test_real_peft_adapter_writes_the_expected_files(tmp_path, base_dir):
    adapter = peft_adapter(base_dir, tmp_path / "peft")
    assert all(k.endswith(".weight") for k in load_file(adapter / "adapter_model.safetensors"))
    out = tmp_path / "out"
    assert run("--model", base_dir, "--adapter", adapter, "--output-dir", out) == 0
    assert {p.name for p in out.iterdir()} == type_files(BERT_TYPES) | {"summary.json"}
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_kind"] == "peft-lora" and summary["compare"] is None
    result = json.loads((out / f"{BERT_TYPES[0]}.json").read_text())
    assert result["layers"] == [0, 1] and result["r"] == result["i"] == result["j"] == 4
    assert result["form"] == "paper" and result["shape"] == [32, 32]
    with open(out / f"{BERT_TYPES[0]}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 2 * 2 and {r["matrix"] for r in rows} == set(KINDS)
    # the same numbers computed by hand from the files
    from transformers import BertForSequenceClassification

    base = BertForSequenceClassification.from_pretrained(base_dir)
    tensors = load_file(adapter / "adapter_model.safetensors")
    convs = []
    for i in (0, 1):
        name = f"bert.encoder.layer.{i}.attention.self.query"
        a, b = tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"]
        convs.append(conversion_matrices(base.get_submodule(name).weight, a, b))
    for kind in ("A", "B"):
        expected = similarity_matrix([getattr(c, f"to_{kind}") for c in convs], 4)
        assert torch.allclose(torch.tensor(result["phi"][kind], dtype=torch.float64), expected, atol=1e-9)
        assert result["mean_off_diagonal"][kind] == pytest.approx(float(expected[0, 1]), abs=1e-9)


def test_condlora_adapter_has_identical_conversions_across_layers(tmp_path, base_dir, ids):
    adapter = condlora_adapter(base_dir, tmp_path / "cond", ids)
    out = tmp_path / "out"
    assert run("--model", base_dir, "--adapter", adapter, "--output-dir", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_kind"] == "condlora"
    for key in BERT_TYPES:
        means = json.loads((out / f"{key}.json").read_text())["mean_off_diagonal"]
        assert means["A"] == pytest.approx(1.0, abs=1e-6) and means["B"] == pytest.approx(1.0, abs=1e-6)
        assert max(means[k] for k in KINDS[2:]) < 0.9


def test_compare_writes_table3_with_one_row_per_layer(tmp_path, base_dir, ids, capsys):
    lora, cond = peft_adapter(base_dir, tmp_path / "peft"), condlora_adapter(base_dir, tmp_path / "cond", ids)
    out = tmp_path / "out"
    assert run("--model", base_dir, "--adapter", lora, "--compare", cond, "--output-dir", out) == 0
    with open(out / "table3.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == ["0", "1"]
    main_cols = [f"{m}_{k}" for m in ("query", "value") for k in ("A", "B", "dW")]
    assert list(rows[0]) == ["layer", *main_cols, *(f"{c}_random" for c in main_cols)]
    assert all(0 <= float(v) <= 1 for r in rows for k, v in r.items() if k != "layer")
    md = (out / "table3.md").read_text().splitlines()
    assert md[2].startswith("| layer | query A | query B | query ΔW") and md[-2].startswith("| mean |")
    assert len(md) == 4 + 2 + 2 and md[-1].startswith("| random |")
    assert (out / "table3.png").stat().st_size > 2000
    # φ of B for layer 0 by hand
    b_peft = load_file(lora / "adapter_model.safetensors")[
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"]
    from transformers import BertForSequenceClassification

    from condlora import load_adapter

    model = load_adapter(BertForSequenceClassification.from_pretrained(base_dir), cond)
    _, b_cond = model.bert.encoder.layer[0].attention.self.query.lora_AB()
    assert float(rows[0]["query_B"]) == pytest.approx(subspace_similarity(b_peft, b_cond.detach(), 4, 4), abs=1e-4)
    assert "table 3 means" in capsys.readouterr().out


def test_compare_with_itself_is_one_everywhere(tmp_path, base_dir, ids):
    cond = condlora_adapter(base_dir, tmp_path / "lora", ids, method="lora")
    out = tmp_path / "out"
    assert run("--model", base_dir, "--adapter", cond, "--compare", cond, "--output-dir", out) == 0
    means = json.loads((out / "summary.json").read_text())["compare"]["mean"]
    assert means == pytest.approx({f"{m}_{k}": 1.0 for m in ("query", "value") for k in ("A", "B", "dW")})


def test_gpt2_conv1d_and_rectangular_layers(tmp_path, ids):
    base = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(base)
    cfg = AdapterConfig(method="condlora", r=4, target_modules=["c_attn", "attn.c_proj", "mlp.c_proj"],
                        cond_form="auto")
    save_adapter(few_steps(apply_adapter(tiny_gpt2(), cfg), ids), tmp_path / "cond")
    out = tmp_path / "out"
    assert run("--model", base, "--adapter", tmp_path / "cond", "--output-dir", out) == 0
    res = {k: json.loads((out / f"transformer_h_{k}.json").read_text()) for k in ("attn_c_attn", "attn_c_proj",
                                                                               "mlp_c_proj")}
    assert res["attn_c_attn"]["shape"] == [96, 32] and res["attn_c_attn"]["form"] == "general"
    assert res["attn_c_proj"]["form"] == "paper"
    assert res["attn_c_attn"]["mean_off_diagonal"]["B"] == pytest.approx(1.0, abs=1e-6)  # tall W0: B exact
    assert res["mlp_c_proj"]["mean_off_diagonal"]["A"] == pytest.approx(1.0, abs=1e-6)  # wide W0: A exact
    assert res["attn_c_proj"]["mean_off_diagonal"]["A"] == pytest.approx(1.0, abs=1e-6)
    assert res["attn_c_attn"]["residual_B"] == pytest.approx([0.0, 0.0], abs=1e-5)


def test_user_mistakes_exit_2_with_one_line(tmp_path, base_dir, capsys):
    untrained = peft_adapter(base_dir, tmp_path / "zero", zero_b=True)
    trained = peft_adapter(base_dir, tmp_path / "peft")
    capsys.readouterr()
    assert run("--model", base_dir, "--adapter", untrained, "--output-dir", tmp_path / "o1") == 2
    err = capsys.readouterr().err
    assert "all zeros" in err and "W0→B of bert.encoder.layer.0.attention.self.query" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # --quiet: no loading bar either
    assert run("--model", base_dir, "--adapter", trained, "--output-dir", tmp_path / "o2", "--i", "5") == 2
    assert "asked for 5" in capsys.readouterr().err
    assert run("--model", base_dir, "--adapter", tmp_path / "missing", "--output-dir", tmp_path / "o3") == 2
    assert "adapter_config.json not found" in capsys.readouterr().err
    assert run("--model", base_dir, "--adapter", trained, "--output-dir", tmp_path / "o4", "--i", "0") == 2
    assert "--i must be a positive integer" in capsys.readouterr().err
    assert run("--model", base_dir, "--adapter", trained, "--output-dir", trained / "adapter_config.json") == 2
    assert "is not a folder" in capsys.readouterr().err


def test_bad_peft_weights_and_forced_paper_form_on_rectangular_layers(tmp_path, ids, capsys):
    base = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(base)
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    model.save_pretrained(tmp_path / "peft")
    capsys.readouterr()
    assert run("--model", base, "--adapter", tmp_path / "peft", "--output-dir", tmp_path / "o",
               "--cond-form", "paper") == 2
    assert "--cond-form paper needs square weights, but transformer.h.0.attn.c_attn is 96x32" in capsys.readouterr().err
    assert run("--model", base, "--adapter", tmp_path / "peft", "--output-dir", tmp_path / "o") == 0
    capsys.readouterr()
    file = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(file)
    next(v for k, v in tensors.items() if "lora_A" in k)[0, 0] = float("nan")
    save_file(tensors, file)
    assert run("--model", base, "--adapter", tmp_path / "peft", "--output-dir", tmp_path / "o") == 2
    assert "must hold finite" in capsys.readouterr().err


def test_condlora_summary_says_its_one_is_by_construction(tmp_path, base_dir, ids, capsys):
    cond = condlora_adapter(base_dir, tmp_path / "cond", ids)
    assert run("--model", base_dir, "--adapter", cond, "--output-dir", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "W0→A 1.000" in out and "1.000 by construction" in out
    lora = peft_adapter(base_dir, tmp_path / "peft")
    assert run("--model", base_dir, "--adapter", lora, "--output-dir", tmp_path / "out2") == 0
    assert "by construction" not in capsys.readouterr().out


def test_torch_threads_sets_and_restores_the_thread_count():
    """The analyses run on one torch thread (many small SVDs crawl with several OpenMP threads on a busy core)
    and give the caller's thread count back, also when the block raises."""
    from condlora.analyze.report import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
