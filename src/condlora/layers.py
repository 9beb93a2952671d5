"""Adapter layers: `LoRALinear`, `CondLoRALinear` and the shared `ABGenerator`.

Each layer wraps a frozen `nn.Linear` (or GPT-2's transposed `Conv1D`) and adds
`(alpha / r) · B · A · dropout(x)` to its output. LoRA owns A and B; CondLoRA asks the generator of its
module type to build them from the layer's frozen weight W0 (torch layout, d_out × d_in):

* paper form (square W0):   A = Θ_A · W0ᵀ,  B = W0 · Θ_Bᵀ,  Θ_A, Θ_B ∈ R^{r × d_in}
* general form (any W0):    A = θ_A · W0,   B = W0 · θ_B,   θ_A ∈ R^{r × d_out}, θ_B ∈ R^{d_in × r}
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import mix_seed

if TYPE_CHECKING:
    from .config import AdapterConfig

SUPPORTED_TYPES = (nn.Linear, Conv1D)
FAST_DTYPES = (torch.float32, torch.float64)  # where W0 + ΔW keeps ΔW's precision (not bf16 / fp16)


def base_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight in torch layout (d_out × d_in); a view, transposed for `Conv1D`."""
    return base.weight.T if isinstance(base, Conv1D) else base.weight


def module_seed(seed: int, name: str, matrix: str = "A") -> int:
    """A stable per-module seed mixed from the config seed, the module's name and the matrix ("A" or "B").

    A keeps the original stream (name alone); B mixes in a suffix, so A and B draws of a module differ.
    """
    key = name if matrix == "A" else f"{name}#lora_{matrix}"
    return mix_seed(seed, zlib.crc32(key.encode())) % (2**63)


def draw_matrix(rows: int, cols: int, init: str, seed: int) -> torch.Tensor:
    """A seeded random rows × cols float32 matrix: "orthogonal", "gaussian" or "kaiming" (uniform, a=√5)."""
    gen = torch.Generator().manual_seed(seed)
    if init == "orthogonal":
        q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=gen))
        return q.T.contiguous() if rows <= cols else q.contiguous()
    if init == "gaussian":
        return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)
    if init == "kaiming":  # nn.init.kaiming_uniform_(a=sqrt(5)) on a rows x cols weight: U(±1/sqrt(cols))
        bound = 1.0 / math.sqrt(cols)
        return torch.rand(rows, cols, generator=gen) * (2 * bound) - bound
    raise ValueError(f"unknown init {init!r}")


@dataclass(frozen=True)
class InitSpec:
    """How a module's A and B start (see `init_pair`): which of them train, how a frozen one is drawn, the seed."""

    train_a: bool = True
    train_b: bool = True
    init_a: str = "orthogonal"
    init_b: str = "orthogonal"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.train_a or self.train_b):
            raise ValueError("train_a and train_b cannot both be false")

    @classmethod
    def from_config(cls, cfg: AdapterConfig) -> InitSpec:
        """The initialisation settings of an `AdapterConfig`."""
        return cls(cfg.train_a, cfg.train_b, cfg.init_a, cfg.init_b, cfg.seed)


def init_pair(r: int, a_cols: int, b_rows: int, init: InitSpec, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial A (r × a_cols) and B (b_rows × r) of module `name`: the frozen one drawn, the other as LoRA's.

    Both train: A kaiming, B zero. A frozen: A drawn with `init.init_a`, B zero. B frozen: B drawn with
    `init.init_b` from its own seed stream, A zero. Either way B · A = 0, so the adapter starts as the identity.
    """
    if not init.train_b:
        return torch.zeros(r, a_cols), draw_matrix(b_rows, r, init.init_b, module_seed(init.seed, name, "B"))
    a = draw_matrix(r, a_cols, init.init_a if not init.train_a else "kaiming", module_seed(init.seed, name))
    return a, torch.zeros(b_rows, r)


class ABGenerator(nn.Module):
    """The one trainable linear map of a CondLoRA module type, shared by all its layers."""

    def __init__(self, d_in: int, d_out: int, r: int, form: str, *, init: InitSpec = InitSpec(), name: str = "",
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        if form not in ("paper", "general"):
            raise ValueError(f"form must be 'paper' or 'general', got {form!r}")
        if form == "paper" and d_in != d_out:
            raise ValueError(f"the paper form needs a square weight, got d_out={d_out}, d_in={d_in}")
        self.d_in, self.d_out, self.r, self.form = d_in, d_out, r, form
        a_cols = d_in if form == "paper" else d_out
        theta_a, theta_b = init_pair(r, a_cols, d_in, init, name)
        if form == "paper":  # stored as Θ_B (r × d_in); B = W0 · Θ_Bᵀ, so the drawn d_in × r map is Θ_Bᵀ
            theta_b = theta_b.T.contiguous()
        self.theta_A = nn.Parameter(theta_a.to(device=device, dtype=dtype), requires_grad=init.train_a)
        self.theta_B = nn.Parameter(theta_b.to(device=device, dtype=dtype), requires_grad=init.train_b)

    def generate(self, w0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (r × d_in) and B (d_out × r) of the layer whose frozen weight is `w0` (d_out × d_in)."""
        return generate_ab(self.theta_A, self.theta_B, w0, self.form)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, r={self.r}, form={self.form}"


def generate_ab(theta_a: torch.Tensor, theta_b: torch.Tensor, w0: torch.Tensor,
                form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CondLoRA's A (r × d_in) and B (d_out × r) from Θ_A, Θ_B and W0 (d_out × d_in) in `form`."""
    if form == "paper":
        return theta_a @ w0.T, w0 @ theta_b.T
    return theta_a @ w0, w0 @ theta_b


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


def state_key(*tensors: torch.Tensor) -> tuple:
    """What a cache of values computed from `tensors` is valid for: their storage, in-place version, dtype, device."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def set_fast_path(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn the fast path of every adapter layer in `model` on or off (off: the reference formulas)."""
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.fast_path = enabled
    return model


class AdapterLayer(nn.Module):
    """Common part of the adapter layers: base call, dropout, scaling, merge and unmerge."""

    # The training fast path runs from tokens·(d_in + d_out) >= min_fast_ratio · d_in·d_out (tokens >= d for a
    # square layer): below that, building W0 + s·B·A twice costs more than the thin products it saves.
    min_fast_ratio = 2.0

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_TYPES):
            raise TypeError(f"cannot adapt {type(base).__name__}; supported: nn.Linear, Conv1D")
        self.base = base
        self.r = r
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.merged = False
        self.fast_path = True
        self._weight_cache: tuple[tuple, torch.Tensor] | None = None
        self.register_buffer("_w0", None, persistent=False)

    @property
    def d_out(self) -> int:
        """Output features of the base layer."""
        return base_weight(self.base).shape[0]

    @property
    def d_in(self) -> int:
        """Input features of the base layer."""
        return base_weight(self.base).shape[1]

    def w0(self) -> torch.Tensor:
        """The frozen base weight W0 (d_out × d_in), also while merged."""
        if self.merged:
            return self._w0.T if isinstance(self.base, Conv1D) else self._w0
        return base_weight(self.base)

    def lora_AB(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's A (r × d_in) and B (d_out × r)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (alpha / r) · B · A in torch layout (d_out × d_in)."""
        a, b = self.lora_AB()
        return (b @ a) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into the base weight; a second call does nothing. W0 is kept for `unmerge`."""
        if self.merged:
            return
        self._weight_cache = None
        delta = self.delta_weight().to(self.base.weight.dtype)
        self._w0 = self.base.weight.detach().clone()
        self.base.weight.add_(delta.T if isinstance(self.base, Conv1D) else delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact W0 kept by `merge`; a call while unmerged does nothing."""
        if not self.merged:
            return
        self.base.weight.copy_(self._w0)
        self._w0 = None
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = base(x) + (alpha / r) · B · A · dropout(x), or base(x) alone while merged.

        Where the result is the same up to rounding, a fast path computes it as one product with
        W0 + (alpha / r) · B · A (see `LowRankLinear`); `fast_path = False` forces the reference path.
        """
        if self.merged:
            return self.base(x)
        if not self.fast_path or not self._fast_ok(x):
            return self.reference_forward(x)
        if not torch.is_grad_enabled():
            return F.linear(x, self._effective_weight(), self.base.bias)
        self._weight_cache = None
        if x.numel() // x.shape[-1] * (self.d_in + self.d_out) < self.min_fast_ratio * self.d_in * self.d_out:
            return self.reference_forward(x)  # few tokens: the thin products alone are cheaper
        return self._fast_train(x)

    def _fast_train(self, x: torch.Tensor) -> torch.Tensor:
        """The training fast path: one `LowRankLinear` call."""
        a, b = self.lora_AB()
        return LowRankLinear.apply(x, self.w0(), self.base.bias, a, b, self.scaling)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged definition, term by term: base(x) + (alpha / r) · B · (A · dropout(x))."""
        y = self.base(x)
        a, b = self.lora_AB()
        h = x if self.dropout is None else self.dropout(x)
        return y + F.linear(F.linear(h.to(a.dtype), a), b * self.scaling).to(y.dtype)

    def _fast_ok(self, x: torch.Tensor) -> bool:
        """Whether the fast path gives the reference result: no live dropout, one float dtype, frozen base."""
        w, bias = self.base.weight, self.base.bias
        return ((self.dropout is None or not self.training) and x.dtype == w.dtype and x.dtype in FAST_DTYPES
                and self._sources()[0].dtype == w.dtype
                and not w.requires_grad and (bias is None or not bias.requires_grad)
                and not torch.is_autocast_enabled(x.device.type))

    def _sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors A and B are computed from (their versions key the no-grad weight cache)."""
        raise NotImplementedError

    def _effective_weight(self) -> torch.Tensor:
        """W0 + (alpha / r) · B · A (d_out × d_in), cached while W0, A and B are unchanged (no-grad use)."""
        key = state_key(*self._sources(), self.base.weight)
        if self._weight_cache is None or self._weight_cache[0] != key:
            with torch.no_grad():
                a, b = self.lora_AB()
                self._weight_cache = (key, torch.addmm(self.w0(), b, a, alpha=self.scaling))
        return self._weight_cache[1]

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


class LoRALinear(AdapterLayer):
    """LoRA (Hu et al. 2022): own A and B from `init_pair` (B · A = 0; a frozen one is a seeded draw)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, *,
                 init: InitSpec = InitSpec(), name: str = "") -> None:
        super().__init__(base, r, alpha, dropout)
        w = base_weight(base)
        a, b = init_pair(r, w.shape[1], w.shape[0], init, name)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype), requires_grad=init.train_a)
        self.lora_B = nn.Parameter(b.to(device=w.device, dtype=w.dtype), requires_grad=init.train_b)

    def lora_AB(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's own A and B."""
        return self.lora_A, self.lora_B

    def _sources(self) -> tuple[torch.Tensor, ...]:
        return self.lora_A, self.lora_B


class CondLoRALinear(AdapterLayer):
    """CondLoRA (Kim et al. 2024): A and B generated from W0 by the module type's shared generator.

    The generator is held by reference (not a submodule), so it is stored and reduced once at model level.
    In eval mode with gradients off, the generated A and B are cached until W0 or Θ change.
    """

    def __init__(self, base: nn.Module, generator: ABGenerator, r: int, alpha: float,
                 dropout: float = 0.0) -> None:
        super().__init__(base, r, alpha, dropout)
        object.__setattr__(self, "generator", generator)
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _sources(self) -> tuple[torch.Tensor, ...]:
        return self.generator.theta_A, self.generator.theta_B

    def _fast_train(self, x: torch.Tensor) -> torch.Tensor:
        """The training fast path: A and B generated inside `LowRankLinear`, not kept between passes."""
        self._cache = None
        gen = self.generator
        return LowRankLinear.apply(x, self.w0(), self.base.bias, gen.theta_A, gen.theta_B, self.scaling, gen.form)

    def lora_AB(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B generated from this layer's W0 (cached in eval mode when gradients are off)."""
        w0 = self.w0()
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.generator.generate(w0)
        key = state_key(*self._sources(), w0)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.generator.generate(w0))
        return self._cache[1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", form={self.generator.form}"
