"""frontier.png: test score (mean ± 95% CI) against trainable adapter parameters (log), one panel per task and one
for the average, one labelled point per row; labels are moved up or down until they overlap no other label."""

from __future__ import annotations

import math
from pathlib import Path

from ..fileio import atomic_write
from .frontier_points import Frontier, Point
from .plots import _pyplot
from .tables import METHOD_LABELS, TASK_LABELS

SHORT = {"lora": "LoRA r=8", "condlora": "CondLoRA (paper)", "condlora-general": "CondLoRA (general)",
         "lora-frozen-a": "LoRA B-only", "lora-frozen-b": "LoRA A-only", "condlora-frozen-a": "CondLoRA Θ_B-only",
         "condlora-frozen-b": "CondLoRA Θ_A-only"}
FAMILY = (("condlora", "C3", "s"), ("lora", "C0", "o"), ("vera", "C2", "^"), ("fourierft", "C4", "D"))
FONT = 7.0  # label size, points


def _style(method: str) -> tuple[str, str, bool]:
    """Colour, marker and whether it is hollow (a frozen-factor row) of a row."""
    colour, marker = next(((c, mk) for prefix, c, mk in FAMILY if method.startswith(prefix)), ("C7", "o"))
    return colour, marker, "frozen" in method


def _free(box: tuple[float, float, float, float], placed: list[tuple[float, float, float, float]]) -> bool:
    """Whether `box` (x0, y0, x1, y1) overlaps none of `placed`."""
    return all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed)


def label_offsets(anchors: list[tuple[float, float]], widths: list[float], height: float, right_edge: float,
                  left_side: list[bool] | None = None) -> list[tuple[float, float, str]]:
    """(dx, dy, ha) in points per label anchored at display points `anchors`: right of its point (left of it where
    `left_side` says so or it would cross `right_edge`), shifted up or down by whole label heights until it
    overlaps no placed label and no point's marker."""
    order = sorted(range(len(anchors)), key=lambda i: anchors[i][1])
    placed = [(x - 4, y - 4, x + 4, y + 4) for x, y in anchors]  # the markers
    out: dict[int, tuple[float, float, str]] = {}
    for i in order:
        (x, y), w = anchors[i], widths[i]
        left = (left_side or [False] * len(anchors))[i] or x + 5 + w > right_edge
        x0 = x - 5 - w if left else x + 5
        for step in range(40):
            dy = height * ((step + 1) // 2) * (1 if step % 2 else -1) if step else 0.0
            box = (x0, y + dy - height / 2, x0 + w, y + dy + height / 2)
            if _free(box, placed):
                break
        placed.append(box)
        out[i] = (-5.0 if left else 5.0, dy, "right" if left else "left")
    return [out[i] for i in range(len(anchors))]


def _label(p: Point, key: str) -> str:
    """The point's label: its short name, '↑' where most of its runs there were still improving."""
    k, n = p.improving.get("all" if key == "avg" else key, (0, 0))
    return SHORT.get(p.method, METHOD_LABELS.get(p.method, p.method)) + (" ↑" if n and 2 * k > n else "")


def dodged(params: list[int]) -> tuple[list[float], list[bool]]:
    """x positions: rows of equal size spread side by side (by ±6% per row) so that their CI bars do not overlap;
    and whether each is the left one of such a group (its label then goes on the left)."""
    xs, lefts = [], []
    for i, x in enumerate(params):
        same = [j for j, y in enumerate(params) if y == x]
        xs.append(x * 1.06 ** (same.index(i) - (len(same) - 1) / 2))
        lefts.append(len(same) > 1 and same.index(i) == 0)
    return xs, lefts


def _limits(ax, pts: list[tuple[float, float, float]], xlim: tuple[float, float]) -> None:
    """Room on the log x axis for labels, and y limits that hold every CI."""
    ax.set_xlim(*xlim)
    lo = min(y - (0 if math.isnan(h) else h) for _, y, h in pts)
    hi = max(y + (0 if math.isnan(h) else h) for _, y, h in pts)
    pad = max(hi - lo, 1.0) * 0.12
    ax.set_ylim(lo - pad, hi + pad)


def _panel(ax, points: list[Point], key: str, title: str, xlim: tuple[float, float]
           ) -> tuple[list[Point], list[float], list[bool]]:
    """One panel: every point with a score on `key` (task or "avg") and its CI bar; returns the points drawn,
    their x and whether each is the left one of rows of equal size."""
    shown = [p for p in points if p.params and p.summary[key].n > 0 and not math.isnan(p.summary[key].mean)]
    ax.set_xscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    if not shown:
        ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        return [], [], []
    xs, lefts = dodged([p.params for p in shown])
    for p, x in zip(shown, xs, strict=True):
        s, (colour, marker, hollow) = p.summary[key], _style(p.method)
        ax.errorbar(x, s.mean, yerr=None if math.isnan(s.half) else s.half, fmt=marker, ms=5, capsize=3,
                    color=colour, mfc="white" if hollow else colour, lw=1, zorder=3)
    _limits(ax, [(x, p.summary[key].mean, p.summary[key].half) for p, x in zip(shown, xs, strict=True)], xlim)
    return shown, xs, lefts


def _labels(ax, key: str, shown: list[Point], xs: list[float], lefts: list[bool]) -> None:
    """The points' labels, placed once the layout is final (positions are measured on the figure)."""
    fig = ax.figure
    to_pt = 72.0 / fig.dpi
    anchors = [tuple(v * to_pt for v in ax.transData.transform((x, p.summary[key].mean)))
               for p, x in zip(shown, xs, strict=True)]
    texts = [_label(p, key) for p in shown]
    right = ax.transAxes.transform((1, 1))[0] * to_pt
    offsets = label_offsets(anchors, [0.6 * FONT * len(t) + 4 for t in texts], 1.5 * FONT, right, lefts)
    for p, x, text, (dx, dy, ha) in zip(shown, xs, texts, offsets, strict=True):
        arrow = {"arrowstyle": "-", "lw": 0.4, "color": "grey"} if dy else None
        ax.annotate(text, (x, p.summary[key].mean), xytext=(dx, dy), textcoords="offset points", ha=ha,
                    va="center", fontsize=FONT, arrowprops=arrow)


def _notes(ax, f: Frontier) -> None:
    """The last panel: how to read the figure, and the rows left out."""
    ax.axis("off")
    lines = ["x: trainable adapter parameters (head apart)", "y: test score x100, mean over seeds",
             "bars: 95% CI (t, n−1 df); none with 1 seed", "↑: most runs still improving at the",
             "    epoch cap (score is a lower bound)", "hollow: frozen-factor rows",
             "rows of equal size: side by side", "Avg.: rows with every learned task"]
    if f.missing:
        lines += ["", "no runs yet:"] + [f"  {SHORT.get(m, METHOD_LABELS.get(m, m))}" for m in f.missing]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, transform=ax.transAxes)


def plot_frontier(f: Frontier, path: str | Path) -> None:
    """frontier.png: a panel per task, one for the average over the learned tasks, and one of notes."""
    plt = _pyplot()
    keys = [*f.tasks, "avg"]
    ncols = min(3, len(keys) + 1)
    nrows = math.ceil((len(keys) + 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    learned = ", ".join(TASK_LABELS.get(k, k) for k in f.table.learned)
    sizes = [p.params for p in f.points if p.params] or [1]
    xlim = (min(sizes) / 2.0, max(sizes) * 2.5)  # the same in every panel
    drawn = []
    for ax, key in zip(flat, keys, strict=False):
        title = f"Avg. ({learned})" if key == "avg" else TASK_LABELS.get(key, key)
        drawn.append((ax, key, *_panel(ax, f.points, key, title, xlim)))
    _notes(flat[len(keys)], f)
    for ax in flat[len(keys) + 1:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test score x100")
    for ax in flat[:len(keys)]:
        ax.set_xlabel("trainable adapter parameters", fontsize=8)
    fig.tight_layout()
    for args in drawn:
        _labels(*args)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))  # no second layout: labels are placed
    plt.close(fig)
