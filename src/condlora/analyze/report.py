"""`condlora analyze`: the paper's analyses for any adapter and model.

1. Per module type, the layer × layer subspace similarity φ of the conversion matrices W0→A and W0→B, next
   to the same pipeline on Gaussian matrices (Kim et al. 2024, Figure 1): JSON, CSV and PNG heatmaps.
2. With `--compare`, per layer φ between two adapters' A (right singular vectors), B and ΔW (left), at
   i = j = r (the paper's Table 3): markdown, CSV and a line plot.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..analysis import (
    ConditioningWarning,
    Conversion,
    basis_similarity,
    conversion_matrices,
    mean_off_diagonal,
    product_left_vectors,
    random_conversions,
    similarity_matrix,
    subspace_similarity,
)
from ..errors import CondLoRAError
from ..fileio import atomic_write, write_json, write_text
from ..inject import generator_key
from ..runner.models import load_classifier
from .matrices import AdapterMatrices, LayerMatrices, read_adapter

KINDS = {"A": "W0→A", "B": "W0→B", "random_A": "W0→A, random W0, A, B", "random_B": "W0→B, random W0, A, B",
         "random_adapter_A": "W0→A, real W0, random A, B", "random_adapter_B": "W0→B, real W0, random A, B"}
TABLE3 = (("A", "A"), ("B", "B"), ("dW", "ΔW"))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block: the analyses' many small SVDs and solves run best on
    one thread, and far slower with several OpenMP threads on a core another job keeps busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rank(layers: list[LayerMatrices]) -> int:
    return min(m.a.shape[0] for m in layers)


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def phi_ab(convs: list[Conversion], i: int, j: int, prefix: str = "",
           names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """{prefix + "A": Φ of the W0→A matrices, prefix + "B": Φ of the W0→B matrices} across layers."""
    return {prefix + k: similarity_matrix([getattr(c, f"to_{k}") for c in convs], i, j, "left",
                                          [f"W0→{k} of {n}" for n in names] if names else None) for k in "AB"}


def random_phi(d_out: int, d_in: int, r: int, n: int, i: int, j: int, form: str, seed: int,
               cache: dict) -> dict[str, torch.Tensor]:
    """φ matrices of W0→A and W0→B for n random Gaussian layers; module types of one shape share them."""
    key = (d_out, d_in, r, n, i, j, form, seed)
    if key not in cache:
        cache[key] = phi_ab(random_conversions(d_out, d_in, r, n, seed, form=form), i, j, "random_")
    return cache[key]


def analyze_module_type(layers: list[LayerMatrices], i: int | None, j: int | None, form: str, seed: int,
                        bar: tqdm, cache: dict) -> dict:
    """φ matrices of W0→A and W0→B across `layers` and of the random baseline, with conditioning facts."""
    (d_out, d_in), r = layers[0].w0.shape, _rank(layers)
    if form == "paper" and d_out != d_in:
        raise CondLoRAError(f"--cond-form paper needs square weights, but {layers[0].name} is {d_out}x{d_in}; "
                            "use --cond-form general or auto")
    convs, ill = [], []
    for m in layers:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convs.append(conversion_matrices(m.w0, m.a, m.b, form))
        ill += [m.name] if any(issubclass(w.category, ConditioningWarning) for w in caught) else []
        bar.update()
    i, j = i or r, j or r
    names = [m.name for m in layers]
    real_w0 = random_conversions(d_out, d_in, r, len(layers), seed, convs[0].form, w0s=[m.w0 for m in layers])
    phi = {**phi_ab(convs, i, j, names=names),
           **random_phi(d_out, d_in, r, len(layers), i, j, convs[0].form, seed, cache),
           **phi_ab(real_w0, i, j, "random_adapter_")}
    bar.update(len(layers))
    return {
        "layers": [m.index for m in layers], "names": names, "shape": [d_out, d_in], "r": r, "i": i, "j": j,
        "form": convs[0].form, "cond": [c.cond for c in convs], "ill_conditioned": ill,
        "residual_A": [c.residual_A for c in convs], "residual_B": [c.residual_B for c in convs],
        "phi": {k: v.tolist() for k, v in phi.items()},
        "mean_off_diagonal": {k: _nan_to_none(mean_off_diagonal(v)) for k, v in phi.items()},
    }


def compare_adapters(x: AdapterMatrices, y: AdapterMatrices, seed: int = 0) -> list[dict]:
    """Per shared layer: φ of A (right vectors), B and ΔW = B·A (left vectors) at i = r_x, j = r_y.

    Each row also holds `<kind>_random`: φ between x's matrix and a Gaussian matrix of y's shape.
    """
    gen, rows = torch.Generator().manual_seed(seed), []
    for type_name, layers in x.types.items():
        for mx in layers:
            my = y.layer(mx.name)
            if my is None:
                continue
            rx, ry = mx.a.shape[0], my.a.shape[0]
            ra, rb = torch.randn(my.a.shape, generator=gen), torch.randn(my.b.shape, generator=gen)
            dx = product_left_vectors(mx.b, mx.a, rx, f"ΔW of {mx.name} ({x.path})")
            rows.append({
                "module_type": type_name, "layer": mx.index, "name": mx.name,
                "A": subspace_similarity(mx.a, my.a, rx, ry, "right"),
                "B": subspace_similarity(mx.b, my.b, rx, ry, "left"),
                "dW": basis_similarity(dx, product_left_vectors(my.b, my.a, ry, f"ΔW of {my.name} ({y.path})")),
                "A_random": subspace_similarity(mx.a, ra, rx, ry, "right"),
                "B_random": subspace_similarity(mx.b, rb, rx, ry, "left"),
                "dW_random": basis_similarity(dx, product_left_vectors(rb, ra, ry)),
            })
    if not rows:
        raise CondLoRAError(f"{x.path} and {y.path} adapt no module in common; nothing to compare")
    return rows


def short_names(types: list[str]) -> dict[str, str]:
    """'query' for 'bert.encoder.layer.*.attention.self.query', or the generator key where that clashes."""
    last = {t: t.rsplit(".", 1)[-1] for t in types}
    clash = len(set(last.values())) < len(last)
    return {t: generator_key(t) if clash else s for t, s in last.items()}


def _png(path: Path, fig) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def heatmap(path: Path, phi: list[list[float]], labels: list[int], title: str) -> None:
    """A layer × layer φ heatmap on a fixed [0, 1] colour scale, with a colour bar (as in the paper's Fig. 1)."""
    from matplotlib.figure import Figure

    n = len(labels)
    fig = Figure(figsize=(1.6 + 0.42 * max(n, 6), 0.9 + 0.38 * max(n, 6)))
    ax = fig.add_subplot()
    im = ax.imshow(phi, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), [str(v) for v in labels])
    ax.set_yticks(range(n), [str(v) for v in labels])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    if n <= 12:
        for a in range(n):
            for b in range(n):
                ax.text(b, a, f"{phi[a][b]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if phi[a][b] > 0.6 else "white")
    fig.colorbar(im, ax=ax, label="φ")
    ax.set_title(title, fontsize=9)
    _png(path, fig)


def write_module_type(out: Path, type_name: str, short: str, result: dict) -> list[str]:
    """`<key>.json`, `<key>.csv` (long form) and one heatmap per kind; returns the file names written."""
    key = generator_key(type_name)
    write_json(out / f"{key}.json", {"module_type": type_name, **result})
    lines = ["matrix,layer_a,layer_b,phi"]
    for kind, phi in result["phi"].items():
        for a, la in enumerate(result["layers"]):
            lines += [f"{kind},{la},{lb},{phi[a][b]:.6f}" for b, lb in enumerate(result["layers"])]
    write_text(out / f"{key}.csv", "\n".join(lines) + "\n")
    files = [f"{key}.json", f"{key}.csv"]
    for kind, label in KINDS.items():
        mean = result["mean_off_diagonal"][kind]
        avg = "n/a" if mean is None else f"{mean:.3f}"
        heatmap(out / f"{key}_{kind}.png", result["phi"][kind], result["layers"],
                f"{short}: φ of {label}, i={result['i']}, j={result['j']}\nmean off-diagonal φ = {avg}")
        files.append(f"{key}_{kind}.png")
    return files


def write_table3(out: Path, rows: list[dict], x_path: str, y_path: str) -> dict[str, dict[str, float]]:
    """table3.md, table3.csv (one row per layer) and table3.png; returns the column means and random means."""
    shorts = short_names(list(dict.fromkeys(r["module_type"] for r in rows)))
    cells = {(r["module_type"], r["layer"], k): v for r in rows for k, v in r.items()}
    layers = sorted({r["layer"] for r in rows})
    columns = {f"{s}_{k}{rand}": (f"{s} {label}", [cells.get((t, layer, k + rand)) for layer in layers])
               for rand in ("", "_random") for t, s in shorts.items() for k, label in TABLE3}
    means = {c: _mean(vals) for c, (_, vals) in columns.items()}
    main = [c for c in columns if not c.endswith("_random")]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    csv = ["layer," + ",".join(columns)]
    csv += [f"{layer}," + ",".join(fmt(vals[n]) for _, vals in columns.values()) for n, layer in enumerate(layers)]
    write_text(out / "table3.csv", "\n".join(csv) + "\n")
    md = [f"φ between `{x_path}` and `{y_path}` (A: right singular vectors; B, ΔW: left; i = j = r)", "",
          "| layer | " + " | ".join(columns[c][0] for c in main) + " |", "|---" * (len(main) + 1) + "|"]
    md += [f"| {layer} | " + " | ".join(fmt(columns[c][1][n]) for c in main) + " |" for n, layer in enumerate(layers)]
    md.append("| mean | " + " | ".join(fmt(means[c]) for c in main) + " |")
    md.append("| random | " + " | ".join(fmt(means[c + "_random"]) for c in main) + " |")
    write_text(out / "table3.md", "\n".join(md) + "\n")
    random_mean = _mean([means[c + "_random"] for c in main])
    line_plot(out / "table3.png", layers, {c: columns[c] for c in main}, random_mean)
    return {"mean": {c: means[c] for c in main}, "random_mean": {c: means[c + "_random"] for c in main}}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def line_plot(path: Path, layers: list[int], columns: dict[str, tuple[str, list[float | None]]],
               random_mean: float | None) -> None:
    """φ per layer, one line per column, with the random baseline dashed: a PNG at `path`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for title, vals in columns.values():
        pts = [(layer, v) for layer, v in zip(layers, vals, strict=True) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=title)
    if random_mean is not None:
        ax.axhline(random_mean, color="gray", linestyle="--", label=f"random ({random_mean:.3f})")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("φ (i = j = r)")
    ax.set_title("subspace similarity between the two adapters, per layer")
    ax.legend(fontsize=7, ncol=2)
    _png(path, fig)


def base_loader(model: str, num_labels: int | None,
                trust_remote_code: bool = False) -> Callable[[int | None], nn.Module]:
    """A cached loader `base(num_labels)` of the base model behind `model`."""
    cache: dict[int, nn.Module] = {}

    def base(saved_labels: int | None) -> nn.Module:
        n = num_labels or saved_labels or next(iter(cache), 2)
        if n not in cache:
            cache[n] = load_classifier(model, num_labels=n, trust_remote_code=trust_remote_code).eval()
        return cache[n]

    return base


@torch.no_grad()
def _read_adapters(args: argparse.Namespace) -> tuple[AdapterMatrices, AdapterMatrices | None]:
    """The --adapter and --compare matrices; --quiet also silences transformers' weight-loading bar."""
    from transformers.utils import logging

    bar_was_on = logging.is_progress_bar_enabled()
    if args.quiet:
        logging.disable_progress_bar()
    try:
        base = base_loader(args.model, args.num_labels, getattr(args, "trust_remote_code", False))
        return read_adapter(args.adapter, base), (read_adapter(args.compare, base) if args.compare else None)
    finally:
        if bar_was_on:
            logging.enable_progress_bar()


def run_analysis(args: argparse.Namespace) -> dict:
    """Every analysis `args` asks for; writes all files and returns the summary (also in summary.json)."""
    start, out = time.perf_counter(), Path(args.output_dir)
    adapter, other = _read_adapters(args)
    shorts = short_names(list(adapter.types))
    summary = {"model": args.model, "adapter": str(args.adapter), "adapter_kind": adapter.kind, "seed": args.seed,
               "compare": None, "module_types": {}}
    total, random_cache = 2 * sum(len(v) for v in adapter.types.values()), {}
    with tqdm(total=total, desc="analyze", unit="layer", disable=args.quiet) as bar, torch.no_grad():
        for type_name, layers in adapter.types.items():
            form = adapter.forms.get(type_name, "auto") if args.cond_form == "auto" else args.cond_form
            result = analyze_module_type(layers, args.i, args.j, form, args.seed, bar, random_cache)
            files = write_module_type(out, type_name, shorts[type_name], result)
            summary["module_types"][type_name] = {
                "files": files, "mean_off_diagonal": result["mean_off_diagonal"], "form": result["form"],
                "i": result["i"], "j": result["j"], "max_cond": max(result["cond"]),
                "ill_conditioned": result["ill_conditioned"]}
        if other is not None:
            means = write_table3(out, compare_adapters(adapter, other, args.seed), str(args.adapter),
                                 str(args.compare))
            summary["compare"] = {"adapter": str(args.compare), "kind": other.kind, **means,
                                  "files": ["table3.md", "table3.csv", "table3.png"]}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    write_json(out / "summary.json", summary)
    return summary
