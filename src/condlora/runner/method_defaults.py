"""Each fine-tuning method's own defaults: adapter size, learning rate, head learning rate, LR grid.

Rows of the comparison at a tiny adapter budget, each named after its size, so that rows of different sizes
can share one table (`condlora train --method` accepts the names too):

* `lora-r1`, `lora-r2`: PEFT LoRA at rank 1 and 2 with alpha = r (scaling 1, as `lora` at r = 8, alpha = 8).
* `vera` (r = 256) and `vera-r1024`: PEFT VeRA (`peft.VeraConfig`), one frozen random pair A, B shared by all
  layers, a trainable vector pair (lambda_d: r, lambda_b: d_out) per layer.
* `fourierft` (n_frequency = 1000, scaling 150): PEFT FourierFT (`peft.FourierFTConfig`), n trainable
  spectral coefficients per layer at fixed random frequencies.

VeRA and FourierFT train with learning rates 10-100x LoRA's and their papers give the classification head
its own, smaller one; the defaults below are those papers' roberta-base GLUE settings (VeRA, arXiv
2310.11454, appendix: adapter LR 4e-3 on SST-2, 1e-2 on MRPC, CoLA, STS-B; head LR 4e-3 on SST-2 and MRPC,
1e-2 on CoLA, STS-B. FourierFT, arXiv 2405.03003, github.com/Chaos96/fourierft experiments/GLUE: adapter
LR 5e-2 on SST-2 and MRPC, 9e-2 on STS-B, 1.2e-1 on CoLA; head LR 6e-3 to 9e-3; scaling 140-151 on SST-2 and
MRPC, PEFT's default 150). Every other method keeps the library's defaults (r = 8, alpha = 8, LR 5e-4,
the head at the adapter's LR) and the LR grid of the converged study (1e-3, 2e-3, 5e-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

LORA_GRID = (1e-3, 2e-3, 5e-3)


@dataclass(frozen=True)
class MethodDefaults:
    """The defaults of one method (row); `fixed` names the settings its name fixes (lora-r1: r and alpha)."""

    kind: str  # the adapter that is built: lora, vera, fourierft, condlora, ... (see runner.methods)
    r: int | None = 8
    alpha: float | None = 8.0
    n_frequency: int | None = None
    fourier_scaling: float | None = None
    lr: float = 5e-4
    head_lr: float | None = None  # None: the head trains at the adapter's LR
    lr_grid: tuple[float, ...] = LORA_GRID
    fixed: tuple[str, ...] = ()

    def sizes(self) -> str:
        """The row's size settings as text, e.g. 'r=1, alpha=1'."""
        names = ("r", "alpha", "n_frequency", "fourier_scaling")
        return ", ".join(f"{n}={getattr(self, n):g}" for n in names if getattr(self, n) is not None)


_VERA = {"kind": "vera", "alpha": None, "lr": 1e-2, "head_lr": 4e-3, "lr_grid": (4e-3, 1e-2, 2.5e-2)}
ROWS = {
    "lora-r1": MethodDefaults("lora", r=1, alpha=1.0, fixed=("r", "alpha")),
    "lora-r2": MethodDefaults("lora", r=2, alpha=2.0, fixed=("r", "alpha")),
    "vera": MethodDefaults(r=256, **_VERA),
    "vera-r1024": MethodDefaults(r=1024, fixed=("r",), **_VERA),
    "fourierft": MethodDefaults("fourierft", r=None, alpha=None, n_frequency=1000, fourier_scaling=150.0,
                                lr=5e-2, head_lr=6e-3, lr_grid=(2e-2, 5e-2, 1.25e-1)),
}
# the kinds of method that take each size setting (full and head record r and alpha, as they always have)
ONLY_FOR = {"alpha": ("lora", "condlora", "full", "head"), "r": ("lora", "condlora", "vera", "full", "head"),
            "n_frequency": ("fourierft",), "fourier_scaling": ("fourierft",)}


def method_defaults(method: str) -> MethodDefaults:
    """The defaults of `method` (a row name of ROWS, or any other method: the library's defaults)."""
    return ROWS.get(method) or MethodDefaults(method)


def applies(setting: str, method: str) -> bool:
    """Whether `setting` (r, alpha, n_frequency, fourier_scaling) means something for `method`'s adapter."""
    kind = method_defaults(method).kind
    return any(kind.startswith(k) for k in ONLY_FOR[setting])


@dataclass(frozen=True)
class MethodSetup:
    """What `methods.setup_method` needs of a run: the method and its adapter settings (`TrainConfig.method_setup`).

    Attributes:
        method: one of RUN_METHODS.
        r, alpha, dropout, target_modules: adapter settings (VeRA: r is its rank; FourierFT: no dropout).
        seed: seed of the adapter's random parts (frozen sides, VeRA's A and B, FourierFT's frequencies).
        cond_form: CondLoRA's form ("auto", "paper" or "general"; see `AdapterConfig`); LoRA ignores it.
        head: the trainable classification head ("dense" or "linear"; see `models.head_module_names`).
        n_frequency, fourier_scaling: FourierFT's (its defaults when None).
    """

    method: str
    r: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    seed: int = 0
    cond_form: str = "auto"
    head: str = "dense"
    n_frequency: int | None = None
    fourier_scaling: float | None = None

    @classmethod
    def row(cls, method: str, target_modules: list[str], head: str = "dense", **kw) -> MethodSetup:
        """`method` at its own sizes from `method_defaults` (r, alpha, n_frequency, fourier_scaling)."""
        d = method_defaults(method)
        sizes = {"r": d.r, "alpha": d.alpha, "n_frequency": d.n_frequency, "fourier_scaling": d.fourier_scaling}
        return cls(method, target_modules=list(target_modules), head=head, **{**sizes, **kw})
