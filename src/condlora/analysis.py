"""The paper's analyses as pure tensor functions: subspace similarity and W0 → A / B conversion matrices.

Notation (torch layout, as everywhere in condlora): W0 is d_out × d_in, A is r × d_in, B is d_out × r.

* Subspace similarity (Hu et al. 2022, §7)::

      φ(X, Y, i, j) = ‖U_X[:, :i]ᵀ · U_Y[:, :j]‖_F² / min(i, j)  ∈ [0, 1]

  with U the left (or right) singular vectors of each matrix, sorted by singular value.
* Conversion matrices (Kim et al. 2024, §3): the matrix C that turns a layer's frozen weight into its
  low-rank matrices. Square W0 (the paper): W0→A = W0⁻¹·Aᵀ, W0→B = W0⁻¹·B, W0→ΔW = W0⁻¹·B·A.
  CondLoRA's paper form (A = Θ_A·W0ᵀ, B = W0·Θ_Bᵀ) gives W0→A = Θ_Aᵀ and W0→B = Θ_Bᵀ in every layer.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .errors import CondLoRAError

FORMS = ("auto", "paper", "general")
MEANINGLESS = 0.1  # warn when cond(W0) · eps(A, B) exceeds this: a relative error bound of 10 %


class RankError(CondLoRAError, ValueError):
    """i or j asks for more singular vectors than a matrix has (or than its numerical rank determines)."""


class ConditioningWarning(UserWarning):
    """W0 is so ill-conditioned that the conversion matrices are dominated by rounding noise."""


@dataclass(frozen=True)
class Conversion:
    """Conversion matrices of one layer (float64) and how well they are determined.

    Attributes:
        to_A: W0→A, d_in × r ("paper": W0·C = Aᵀ) or d_out × r ("general": W0ᵀ·C = Aᵀ).
        to_B: W0→B, d_in × r (W0·C = B).
        to_delta: W0→ΔW = W0→B · A, d_in × d_in (the scaling alpha / r is left out: φ ignores it).
        cond: condition number σ_max / σ_min of W0 (inf when singular).
        form: "paper" or "general", the system that was solved for to_A.
        residual_A: ‖M·to_A − Aᵀ‖_F / ‖Aᵀ‖_F with M the solved matrix (0 when Aᵀ is in its column space).
        residual_B: ‖W0·to_B − B‖_F / ‖B‖_F.
    """

    to_A: torch.Tensor
    to_B: torch.Tensor
    to_delta: torch.Tensor
    cond: float
    form: str
    residual_A: float
    residual_B: float


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps


def singular_vectors(x: torch.Tensor, k: int, side: str = "left", name: str = "X",
                     eps: float | None = None) -> torch.Tensor:
    """The top-k left (columns of U) or right (columns of V) singular vectors of `x`, float64.

    Raises `RankError` when k exceeds min(x.shape) or the numerical rank of `x` (singular values above
    σ_max · max(m, n) · eps, eps that of x.dtype unless given): beyond it the vectors are arbitrary,
    not a property of `x`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a matrix, got shape {tuple(x.shape)}")
    if k < 1 or k > min(x.shape):
        raise RankError(f"{name} ({x.shape[0]}x{x.shape[1]}) has {min(x.shape)} singular vectors; asked for {k}")
    u, s, vh = torch.linalg.svd(x.detach().to(device="cpu", dtype=torch.float64), full_matrices=False)
    tol = (s[0] * max(x.shape) * (eps or _eps(x.dtype))).item() if s.numel() else 0.0
    rank = int((s > tol).sum())
    if k > rank:
        raise RankError(f"{name} has numerical rank {rank}, so its top {k} singular vectors are not determined"
                        + (" (it is all zeros)" if rank == 0 else ""))
    return u[:, :k] if side == "left" else vh[:k].T


def product_left_vectors(b: torch.Tensor, a: torch.Tensor, k: int, name: str = "B·A") -> torch.Tensor:
    """The top-k left singular vectors of the product B·A (d_out × r times r × d_in) without forming it.

    With B = Q·R (thin QR), B·A = Q·(R·A), so U_{B·A} = Q·U_{R·A}: an r × d_in SVD instead of d_out × d_in.
    """
    q, r = torch.linalg.qr(b.detach().to(device="cpu", dtype=torch.float64))
    ra = r @ a.detach().to(device="cpu", dtype=torch.float64)
    if k > min(b.shape[0], a.shape[1]):
        raise RankError(f"{name} ({b.shape[0]}x{a.shape[1]}) has {min(b.shape[0], a.shape[1])} singular vectors; "
                        f"asked for {k}")
    return q @ singular_vectors(ra, k, "left", name, eps=max(_eps(a.dtype), _eps(b.dtype)))


def basis_similarity(u: torch.Tensor, v: torch.Tensor) -> float:
    """φ from two orthonormal bases: ‖uᵀ·v‖_F² / min(#columns)."""
    return float((u.T @ v).pow(2).sum() / min(u.shape[1], v.shape[1]))


def subspace_similarity(x: torch.Tensor, y: torch.Tensor, i: int, j: int, side: str = "left") -> float:
    """φ(X, Y, i, j) = ‖U_X[:, :i]ᵀ U_Y[:, :j]‖_F² / min(i, j) ∈ [0, 1] (Hu et al. 2022, eq. 4).

    `side="left"` compares column spaces (left singular vectors U); `"right"` compares row spaces (V).
    1 means the top-i subspace of one lies in the top-j subspace of the other; random subspaces of
    dimension i, j in R^n give about max(i, j) / n.
    """
    if x.shape[0 if side == "left" else 1] != y.shape[0 if side == "left" else 1]:
        raise ValueError(f"{side} singular vectors of {tuple(x.shape)} and {tuple(y.shape)} live in different spaces")
    return basis_similarity(singular_vectors(x, i, side, "X"), singular_vectors(y, j, side, "Y"))


def similarity_matrix(mats: list[torch.Tensor], i: int, j: int | None = None, side: str = "left",
                      names: list[str] | None = None) -> torch.Tensor:
    """The n × n matrix Φ[a, b] = φ(mats[a], mats[b], i, j); each SVD is computed once."""
    j = i if j is None else j
    names = names or [f"matrix {n}" for n in range(len(mats))]
    left = [singular_vectors(m, i, side, nm) for m, nm in zip(mats, names, strict=True)]
    right = left if j == i else [singular_vectors(m, j, side, nm) for m, nm in zip(mats, names, strict=True)]
    return torch.tensor([[basis_similarity(u, v) for v in right] for u in left], dtype=torch.float64)


def mean_off_diagonal(phi: torch.Tensor) -> float:
    """The average of Φ[a, b] over a ≠ b (NaN for a 1 × 1 matrix)."""
    n = phi.shape[0]
    if n < 2:
        return math.nan
    return float((phi.sum() - phi.diagonal().sum()) / (n * n - n))


def _solve(m: torch.Tensor, rhs: torch.Tensor, cond: float) -> torch.Tensor:
    """m⁻¹·rhs by LU for a well-posed square m, else the minimum-norm least-squares solution (SVD based)."""
    if m.shape[0] == m.shape[1] and cond * _eps(torch.float64) < 1e-3:
        return torch.linalg.solve(m, rhs)
    return torch.linalg.lstsq(m, rhs, driver="gelsd").solution


def _residual(m: torch.Tensor, c: torch.Tensor, rhs: torch.Tensor) -> float:
    norm = rhs.norm()
    return float((m @ c - rhs).norm() / norm) if norm > 0 else 0.0


def conversion_matrices(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, form: str = "auto") -> Conversion:
    """W0→A, W0→B and W0→ΔW of one layer, computed in float64 without forming W0⁻¹.

    * "paper" (square W0; the paper's definition): W0→A = W0⁻¹·Aᵀ, W0→B = W0⁻¹·B, W0→ΔW = W0⁻¹·B·A,
      by LU solves. CondLoRA paper form (A = Θ_A·W0ᵀ, B = W0·Θ_Bᵀ) gives exactly Θ_Aᵀ and Θ_Bᵀ.
    * "general" (any W0; lifts the paper's square-only limitation): W0→A = argmin ‖W0ᵀ·C − Aᵀ‖ and
      W0→B = argmin ‖W0·C − B‖, minimum-norm least squares, i.e. (W0ᵀ)⁺·Aᵀ and W0⁺·B. CondLoRA general
      form (A = θ_A·W0, B = W0·θ_B) gives θ_Aᵀ and θ_B exactly where the system is overdetermined (full
      column rank); where it is underdetermined (more unknowns than equations) the result is the part of
      θ that W0 can see, its projection onto W0's row space (for B) or column space (for A).
    * "auto": "paper" for square W0, "general" otherwise.

    Warns (`ConditioningWarning`) when cond(W0) · eps(dtype of A, B) > 0.1: the rounding error already in
    A and B may then change the result by more than 10 %.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
    d_out, d_in = w0.shape
    if a.shape[1] != d_in or b.shape[0] != d_out or a.shape[0] != b.shape[1]:
        raise ValueError(f"shapes do not fit W0 {d_out}x{d_in}: A {tuple(a.shape)}, B {tuple(b.shape)}")
    if form == "auto":
        form = "paper" if d_out == d_in else "general"
    if form == "paper" and d_out != d_in:
        raise ValueError(f"the paper form needs a square W0, got {d_out}x{d_in}; use form='general'")
    w, a64, b64 = (t.detach().to(device="cpu", dtype=torch.float64) for t in (w0, a, b))
    s = torch.linalg.svdvals(w)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    eps = max(_eps(a.dtype), _eps(b.dtype))
    if cond * eps > MEANINGLESS:
        warnings.warn(f"W0 ({d_out}x{d_in}) has condition number {cond:.3g}: with {a.dtype} A and B the "
                      "conversion matrices may be dominated by rounding noise", ConditioningWarning, stacklevel=2)
    m_a = w if form == "paper" else w.T
    to_a = _solve(m_a, a64.T, cond)
    to_b = _solve(w, b64, cond)
    return Conversion(to_A=to_a, to_B=to_b, to_delta=to_b @ a64, cond=cond, form=form,
                      residual_A=_residual(m_a, to_a, a64.T), residual_B=_residual(w, to_b, b64))


def random_conversions(d_out: int, d_in: int, r: int, n: int, seed: int = 0, form: str = "auto",
                       w0s: list[torch.Tensor] | None = None) -> list[Conversion]:
    """Conversion matrices of n layers whose W0 (d_out × d_in), A (r × d_in), B (d_out × r) are N(0, 1).

    The random baseline: compare `similarity_matrix` of these with that of a trained adapter. With `w0s`
    (n real weights of shape d_out × d_in) only A and B are drawn: the baseline of an untrained, random
    adapter on this very model, which keeps whatever structure W0⁻¹ alone puts into the conversions.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        w0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) if w0s is None else w0s[k]
        a = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
        b = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
        out.append(conversion_matrices(w0, a, b, form))
    return out
