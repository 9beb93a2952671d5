"""The frontier's data: one `Point` per row (adapter size, score per task, still-improving runs) and the `Frontier`.

Shared by study/frontier.py (which builds them from run folders) and study/frontier_plot.py (which draws them).
"""

from __future__ import annotations

from dataclasses import dataclass

from .stats import Summary
from .tables import Table2


@dataclass(frozen=True)
class Point:
    """One row of the frontier: its adapter size, its score per task (and "avg") and its still-improving runs."""

    method: str
    params: int | None  # trainable adapter parameters (head apart), the most common count its runs recorded
    summary: dict[str, Summary]  # task | "avg" -> mean ± CI over seeds (x100)
    improving: dict[str, tuple[int, int]]  # task | "all" -> (runs still improving at the cap, runs)

    @property
    def lower_bound(self) -> bool:
        """Whether most of its runs were still improving at the epoch cap (its score is then a lower bound)."""
        k, n = self.improving["all"]
        return n > 0 and 2 * k > n


@dataclass(frozen=True)
class Frontier:
    """The points of every row with at least one finished run, the tasks, the rows left out, and Table 2."""

    tasks: list[str]
    points: list[Point]
    missing: list[str]  # rows without any finished run yet
    table: Table2
