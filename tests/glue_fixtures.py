"""Small GLUE-layout TSV files, a WordPiece tokenizer and a tiny BERT folder, written into tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import torch

WORDS = ["the", "a", "cat", "dog", "is", "on", "mat", "not", "big", "small", "red", "sat", "ran", "he", "said",
         "what", "who", "why", "was", "good", "bad", '"', ".", ",", "?", "'"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def real_glue_dir() -> Path | None:
    """$CONDLORA_GLUE_DIR, else <repo>/../shared/data/glue; None when absent."""
    path = Path(os.environ.get("CONDLORA_GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared/data/glue")
    return path if path.is_dir() else None


def sentence(i: int, n: int = 5) -> str:
    """A deterministic sentence from the tiny vocabulary; every 5th one starts with a quote."""
    words = [WORDS[(i * 7 + k * 3) % 21] for k in range(n + i % 4)]
    text = " ".join(words)
    return f'" {text} " he said .' if i % 5 == 0 else text


def _rows(task: str, n: int, dev: bool = False) -> tuple[str | None, list[str]]:
    s1 = [sentence(i) for i in range(n)]
    s2 = [sentence(i + 11, 3) for i in range(n)]
    b = [str(i % 2) for i in range(n)]
    if task == "CoLA":
        return None, [f"gj04\t{b[i]}\t{'*' if b[i] == '0' else ''}\t{s1[i]}" for i in range(n)]
    if task == "SST-2":
        return "sentence\tlabel", [f"{s1[i]}\t{b[i]}" for i in range(n)]
    if task == "MRPC":
        return "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", [f"{b[i]}\t{100 + i}\t{200 + i}\t{s1[i]}\t{s2[i]}"
                                                                     for i in range(n)]
    if task == "STS-B":
        head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        return head, [f"{i}\tmain\tMSRvid\t2012\t{i:04d}\tnone\tnone\t{s1[i]}\t{s2[i]}\t{(i % 11) / 2:.3f}"
                      for i in range(n)]
    if task == "QQP":
        return "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", [f"{i}\t{2 * i}\t{2 * i + 1}\t{s1[i]} ?\t{s2[i]} ?"
                                                                     f"\t{b[i]}" for i in range(n)]
    if task == "MNLI":
        labels = ["entailment", "neutral", "contradiction"]
        extra = "label1\tlabel2\tlabel3\tlabel4\tlabel5" if dev else "label1"
        head = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                f"sentence2_parse\tsentence1\tsentence2\t{extra}\tgold_label")
        k = 5 if dev else 1
        return head, [f"{i}\t{i}\t{i}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{s1[i]}\t{s2[i]}\t"
                      + "\t".join([labels[i % 3]] * k) + f"\t{labels[i % 3]}" for i in range(n)]
    nli = ["entailment", "not_entailment"]
    cols = "index\tquestion\tsentence\tlabel" if task == "QNLI" else "index\tsentence1\tsentence2\tlabel"
    return cols, [f"{i}\t{s1[i]}\t{s2[i]}\t{nli[i % 2]}" for i in range(n)]


def write_tsv(path: Path, header: str | None, rows: list[str], trailing_newline: bool = True) -> Path:
    """Write rows (and a header) as UTF-8 lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(([header] if header else []) + rows) + ("\n" if trailing_newline else "")
    path.write_bytes(text.encode("utf-8"))
    return path


FOLDERS = ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE"]


def write_glue(root: Path, n_train: int = 40, n_dev: int = 12, folders: list[str] = FOLDERS) -> Path:
    """A GLUE-layout folder with train and dev files of every task (CoLA dev without a final newline)."""
    for folder in folders:
        header, rows = _rows(folder, n_train)
        write_tsv(root / folder / "train.tsv", header, rows)
        devs = ["dev_matched.tsv", "dev_mismatched.tsv"] if folder == "MNLI" else ["dev.tsv"]
        for j, name in enumerate(devs):
            header, rows = _rows(folder, n_dev + j, dev=True)
            write_tsv(root / folder / name, header, rows, trailing_newline=folder != "CoLA")
    return root


def make_tokenizer(folder: Path):
    """A lower-casing WordPiece tokenizer over the tiny vocabulary, saved in `folder`."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab=str(vocab))
    tok.save_pretrained(folder)
    return tok


def make_tiny_model_dir(folder: Path) -> Path:
    """A folder with a tiny random BERT encoder (2 layers, width 32) and its tokenizer."""
    from transformers import BertConfig, BertModel

    tok = make_tokenizer(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    return folder
