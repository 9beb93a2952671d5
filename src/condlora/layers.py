"""Adapter layers: `LoRALinear`, `CondLoRALinear` and the shared `ABGenerator`.

Each layer wraps a frozen `nn.Linear` (or GPT-2's transposed `Conv1D`) and adds
`(alpha / r) · B · A · dropout(x)` to its output. LoRA owns A and B; CondLoRA asks the generator of its
module type to build them from the layer's frozen weight W0 (torch layout, d_out × d_in; formulas in `ops`):

* paper form (square W0):   A = Θ_A · W0ᵀ,  B = W0 · Θ_Bᵀ,  Θ_A, Θ_B ∈ R^{r × d_in}
* general form (any W0):    A = θ_A · W0,   B = W0 · θ_B,   θ_A ∈ R^{r × d_out}, θ_B ∈ R^{d_in × r}

In training on a GPU, the generator builds all its layers' A and B at once before each forward of the
adapted model (`ABGenerator.begin_forward`, called by the hook `inject` installs); one layer at a time
on a CPU and outside the model's forward.
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
from .ops import LowRankLinear, Round, can_batch, generate_ab, state_key

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

    # Device types where each layer generates its own A and B even in training: on a CPU, stacking the
    # weights for the batched products costs more memory traffic than the per-layer calls it saves.
    per_layer_devices: tuple[str, ...] = ("cpu",)

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
        self.batched = True  # False: every layer generates its own A and B (the same values up to rounding)
        self._layers: list[CondLoRALinear] = []  # by reference, in `attach` order
        self._round: Round | None = None

    def generate(self, w0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (r × d_in) and B (d_out × r) of the layer whose frozen weight is `w0` (d_out × d_in)."""
        return generate_ab(self.theta_A, self.theta_B, w0, self.form)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the last forward's generation behind (tensors with gradient history)."""
        return {**super().__getstate__(), "_round": None}

    def attach(self, layer: CondLoRALinear) -> int:
        """Register a layer that uses this generator; returns its index in the batched generation."""
        self._layers.append(layer)
        return len(self._layers) - 1

    def begin_forward(self) -> None:
        """Before a forward with gradients: all attached layers' A and B in one `GenerateAll` (else nothing)."""
        self._round = None
        if not (self.batched and torch.is_grad_enabled() and len(self._layers) > 1
                and (self.theta_A.requires_grad or self.theta_B.requires_grad)
                and self.theta_A.device.type not in self.per_layer_devices):
            return
        w0s = [layer.w0() for layer in self._layers]
        if can_batch([self.theta_A, self.theta_B, *w0s]):
            self._round = Round(self.theta_A, self.theta_B, w0s, self.form, self._layers[0].scaling)

    def generated(self, layer: CondLoRALinear) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`layer`'s A and scaling · B from this forward's batched generation; None if there is none for it."""
        rnd = self._round
        if rnd is None:
            return None
        return rnd.get(layer._index, self.theta_A, self.theta_B, layer.w0(), layer.scaling)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, r={self.r}, form={self.form}"


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
    # ... and only on these devices: on a GPU the full-size passes it saves cost less than its extra launches.
    fast_train_devices: tuple[str, ...] = ("cpu",)

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_TYPES):
            raise TypeError(f"cannot adapt {type(base).__name__}; supported: nn.Linear, Conv1D")
        self.base = base
        self.d_out, self.d_in = base_weight(base).shape
        self.r = r
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.merged = False
        self.fast_path = True
        self._weight_cache: tuple[tuple, torch.Tensor] | None = None
        self.register_buffer("_w0", None, persistent=False)

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
        if (x.device.type not in self.fast_train_devices
                or x.numel() // x.shape[-1] * (self.d_in + self.d_out) < self.min_fast_ratio * self.d_in * self.d_out):
            return self.reference_forward(x)  # few tokens (the thin products alone are cheaper) or a GPU
        return self._fast_train(x)

    def _fast_train(self, x: torch.Tensor) -> torch.Tensor:
        """The training fast path: one `LowRankLinear` call."""
        a, b = self.lora_AB()
        return LowRankLinear.apply(x, self.w0(), self.base.bias, a, b, self.scaling)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged definition, term by term: base(x) + (alpha / r) · B · (A · dropout(x))."""
        y = self.base(x)
        a, sb = self._scaled_ab()
        h = x if self.dropout is None else self.dropout(x)
        return y + F.linear(F.linear(h.to(a.dtype), a), sb).to(y.dtype)

    def _scaled_ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and (alpha / r) · B for a forward."""
        a, b = self.lora_AB()
        return a, b * self.scaling

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
        self._index = generator.attach(self)

    def _sources(self) -> tuple[torch.Tensor, ...]:
        return self.generator.theta_A, self.generator.theta_B

    def _fast_train(self, x: torch.Tensor) -> torch.Tensor:
        """The training fast path: A and B of the batched generation, else generated inside `LowRankLinear`."""
        self._cache = None
        gen, w0 = self.generator, self.w0()
        ab = gen.generated(self)
        if ab is not None:  # B comes scaled
            return LowRankLinear.apply(x, w0, self.base.bias, *ab, 1.0)
        return LowRankLinear.apply(x, w0, self.base.bias, gen.theta_A, gen.theta_B, self.scaling, gen.form)

    def _scaled_ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and (alpha / r) · B: from the batched generation where there is one."""
        if self.training or torch.is_grad_enabled():
            ab = self.generator.generated(self)
            if ab is not None:
                self._cache = None
                return ab
        return super()._scaled_ab()

    def lora_AB(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B generated from this layer's W0 (batched in training; cached in eval mode without gradients)."""
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
