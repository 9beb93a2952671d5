"""The formulas and autograd functions the adapter layers run.

CondLoRA's A and B from the frozen weights, of one layer or of all layers of a module type at once, and
`LowRankLinear`, the training fast path of an adapted layer.

For each layer with frozen weight W0 (torch layout, d_out × d_in):

* paper form (square W0):   A = Θ_A · W0ᵀ,  B = W0 · Θ_Bᵀ,  Θ_A, Θ_B ∈ R^{r × d_in}
* general form (any W0):    A = θ_A · W0,   B = W0 · θ_B,   θ_A ∈ R^{r × d_out}, θ_B ∈ R^{d_in × r}

`GenerateAll` does this for the L layers of a module type with one or two matrix products forward and
one or two backward, in place of 2·L small products each way, and keeps no stacked copy of the weights
between the passes: it stacks them again in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def state_key(*tensors: torch.Tensor) -> tuple:
    """What a cache of values computed from `tensors` is valid for: their storage, in-place version, dtype, device."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def generate_ab(theta_a: torch.Tensor, theta_b: torch.Tensor, w0: torch.Tensor,
                form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CondLoRA's A (r × d_in) and B (d_out × r) from Θ_A, Θ_B and W0 (d_out × d_in) in `form`."""
    if form == "paper":
        return theta_a @ w0.T, w0 @ theta_b.T
    return theta_a @ w0, w0 @ theta_b


def generate_all(theta_a: torch.Tensor, theta_b: torch.Tensor, w: torch.Tensor, form: str,
                 scale_b: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (L × r × d_in) and scale_b · B (L × d_out × r) of every layer from the stacked W0s `w` (L × d_out × d_in)."""
    n, d_out, d_in = w.shape
    flat = w.reshape(n * d_out, d_in)
    r = theta_a.shape[0]
    theta_b = theta_b * scale_b if scale_b != 1.0 else theta_b
    if form == "paper":  # A_lᵀ = W_l · Θ_Aᵀ and B_l = W_l · Θ_Bᵀ: one product for both
        both = (flat @ torch.cat((theta_a, theta_b)).T).view(n, d_out, 2 * r)
        return both[..., :r].transpose(1, 2), both[..., r:]
    return torch.matmul(theta_a, w), (flat @ theta_b).view(n, d_out, r)


def theta_grads(ga: torch.Tensor | None, gb: torch.Tensor | None, w: torch.Tensor,
                form: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of Θ_A, Θ_B from those of the stacked A (L × r × d_in) and B (L × d_out × r)."""
    n, d_out, d_in = w.shape
    flat = w.reshape(n * d_out, d_in)
    if form == "paper":  # ∂Θ_A = Σ_l ∂A_l · W_l and ∂Θ_B = Σ_l ∂B_lᵀ · W_l
        parts = [g for g in (None if ga is None else ga.transpose(1, 2), gb) if g is not None]
        both = torch.cat(parts, dim=2).reshape(n * d_out, -1).T @ flat
        r = both.shape[0] // len(parts)
        return (both[:r] if ga is not None else None), (both[-r:] if gb is not None else None)
    grad_a = None if ga is None else torch.matmul(ga, w.transpose(1, 2)).sum(0)  # Σ_l ∂A_l · W_lᵀ
    grad_b = None if gb is None else flat.T @ gb.reshape(n * d_out, -1)  # Σ_l W_lᵀ · ∂B_l
    return grad_a, grad_b


class GenerateAll(torch.autograd.Function):
    """All layers' A and scaling · B of one module type as 2·L separate outputs (A_1..A_L, then the B_l).

    Separate outputs give each layer its own gradient edge (no L-fold accumulation into a stacked
    gradient). The weights are frozen: backward needs only them, not Θ, so they are held by reference and
    stacked again there; nothing is saved for backward, which therefore may run more than once (a layer
    recomputed by reentrant gradient checkpointing reaches this node on its own backward). B comes scaled
    so that the layers need no extra product for the scaling.
    """

    @staticmethod
    def forward(ctx, theta_a: torch.Tensor, theta_b: torch.Tensor, form: str, scaling: float, *w0s: torch.Tensor):
        a, b = generate_all(theta_a, theta_b, torch.stack(w0s), form, scaling)
        ctx.form, ctx.scaling, ctx.w0s = form, scaling, w0s
        ctx.theta_dtypes = (theta_a.dtype, theta_b.dtype)
        ctx.set_materialize_grads(False)
        a, b = a.unbind(0), b.unbind(0)
        need_a, need_b = ctx.needs_input_grad[:2]
        ctx.mark_non_differentiable(*(() if need_a else a), *(() if need_b else b))
        return (*a, *b)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        n = len(ctx.w0s)
        ga = stack_grads(grads[:n]) if ctx.needs_input_grad[0] else None
        gb = stack_grads(grads[n:]) if ctx.needs_input_grad[1] else None
        if ga is None and gb is None:
            return None, None, None, None, *([None] * n)
        w = torch.stack(ctx.w0s)  # under autocast A and B came out in the autocast dtype: back to W0's
        grad_a, grad_b = theta_grads(_as(ga, w.dtype), _as(gb, w.dtype), w, ctx.form)
        if grad_b is not None and ctx.scaling != 1.0:
            grad_b = grad_b.mul_(ctx.scaling)
        dtype_a, dtype_b = ctx.theta_dtypes
        return _as(grad_a, dtype_a), _as(grad_b, dtype_b), None, None, *([None] * n)


def _as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`t` in `dtype` (None stays None)."""
    return None if t is None else t.to(dtype)


def stack_grads(grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor | None:
    """The layers' gradients of A (or B) stacked; a layer that got none counts as zero; None if none got any."""
    if all(g is None for g in grads):
        return None
    like = next(g for g in grads if g is not None)
    return torch.stack([torch.zeros_like(like) if g is None else g for g in grads])


class Round:
    """One forward's A and scaling · B of all layers of a module type (`GenerateAll`), and what they came from.

    Under torch.compile the round is made and used inside traced code, and the storage and version checks
    (which dynamo cannot trace) are skipped; such a round serves no eager call.
    """

    def __init__(self, theta_a: torch.Tensor, theta_b: torch.Tensor, w0s: list[torch.Tensor], form: str,
                 scaling: float) -> None:
        compiling = torch.compiler.is_compiling()
        self.scaling = scaling
        self.key = None if compiling else versions(theta_a, theta_b)
        self.w0_keys = None if compiling else [versions(w) for w in w0s]
        outs = GenerateAll.apply(theta_a, theta_b, form, scaling, *w0s)
        self.a, self.b = outs[: len(w0s)], outs[len(w0s):]

    def get(self, index: int, theta_a: torch.Tensor, theta_b: torch.Tensor, w0: torch.Tensor,
            scaling: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer `index`'s A and scaling · B; None where Θ, its W0 or the scaling changed since."""
        if scaling != self.scaling or not torch.compiler.is_compiling() and (
                self.key is None or versions(theta_a, theta_b) != self.key or versions(w0) != self.w0_keys[index]):
            return None
        return self.a[index], self.b[index]


def versions(*tensors: torch.Tensor) -> tuple[int, ...]:
    """The storage address and in-place version of each tensor: what a round generated from them is valid for."""
    return tuple(v for t in tensors for v in (t.data_ptr(), t._version))


def can_batch(tensors: list[torch.Tensor]) -> bool:
    """Whether `tensors` (Θ and every W0) are plain local tensors of one dtype and device, so they can be stacked.

    Not so under FSDP, whose parameters are sharded `DTensor`s outside their own module's forward.
    """
    first = tensors[0]
    return all(type(t) in (torch.Tensor, nn.Parameter) and t.dtype == first.dtype and t.device == first.device
               for t in tensors)


class LowRankLinear(torch.autograd.Function):
    """y = x · (W0 + s·B·A)ᵀ + bias, with the gradients of the unmerged form; W0 and bias are frozen.

    One full-size product forward and one backward (grad x = g · (W0 + s·B·A)), like the frozen layer
    alone; the adapter adds only thin products with r columns: h = x·Aᵀ (saved, tokens × r), g·B,
    grad B = s·gᵀ·h, grad A = s·(g·B)ᵀ·x. No tokens × d_out adapter output, no extra sums of full-size
    activations, and x is kept only when A trains. The merged weight is rebuilt in backward, not kept.
    With `form` ("paper" / "general"), `p`, `q` are CondLoRA's Θ_A, Θ_B: A and B are generated inside,
    again in backward rather than kept, and their gradients are mapped onto Θ_A, Θ_B.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w0: torch.Tensor, bias: torch.Tensor | None, p: torch.Tensor,
                q: torch.Tensor, scaling: float, form: str | None = None) -> torch.Tensor:
        a, b = (p, q) if form is None else generate_ab(p, q, w0, form)
        y = F.linear(x, torch.addmm(w0, b, a, alpha=scaling), bias)
        need_a, need_b = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        h = F.linear(x, a) if need_b else None
        ctx.scaling, ctx.form = scaling, form
        ctx.save_for_backward(x if need_a else None, w0, p, q, h)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w0, p, q, h = ctx.saved_tensors
        s, form = ctx.scaling, ctx.form
        a, b = (p, q) if form is None else generate_ab(p, q, w0, form)
        g2 = g.reshape(-1, g.shape[-1])
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ torch.addmm(w0, b, a, alpha=s)
        if ctx.needs_input_grad[3]:
            grad_a = torch.mm((g2 @ b).T, x.reshape(-1, x.shape[-1])).mul_(s)
            if form is not None:  # A = Θ_A·W0ᵀ (paper) or Θ_A·W0 (general)
                grad_a = grad_a @ w0 if form == "paper" else grad_a @ w0.T
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(g2.T, h.reshape(-1, h.shape[-1])).mul_(s)
            if form is not None:  # B = W0·Θ_Bᵀ (paper) or W0·Θ_B (general)
                grad_b = grad_b.T @ w0 if form == "paper" else w0.T @ grad_b
        return grad_x, None, None, grad_a, grad_b, None, None
