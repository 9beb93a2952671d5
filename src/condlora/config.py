"""`AdapterConfig`: every adapter setting, validated, with a JSON round-trip."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

ADAPTER_METHODS = ("lora", "condlora")  # the adapters of AdapterConfig.method
COND_FORMS = ("auto", "paper", "general")
INIT_A = ("orthogonal", "gaussian", "kaiming")
INIT_B = INIT_A
FORMAT_VERSION = 1
SEED_MULTIPLIER = 1_000_003  # a prime: seeds mixed as seed · SEED_MULTIPLIER + salt do not collide for small salts


def mix_seed(seed: int, salt: int) -> int:
    """A seed derived from a run's `seed` and a `salt` (a module name's hash, an epoch, a trial number)."""
    return seed * SEED_MULTIPLIER + salt


@dataclass
class AdapterConfig:
    """Settings of one LoRA / CondLoRA adapter.

    Attributes:
        method: "lora" (one A, B pair per layer) or "condlora" (one shared generator per module type).
        r: rank of the update.
        alpha: scaling numerator; the update is scaled by alpha / r.
        dropout: dropout on the adapter branch's input only, in [0, 1).
        target_modules: PEFT rules: a list matches a module's full name or a ".suffix" of it; a string is
            a regular expression that must match the full name.
        cond_form: CondLoRA only. "general" (default; A = θ_A·W0, B = W0·θ_B; any shape), "paper"
            (A = Θ_A·W0ᵀ, B = W0·Θ_Bᵀ, the paper's; square layers only) or "auto" (paper where square, general
            otherwise; the default of earlier versions, kept by the adapters saved with it).
        train_a: False freezes A (LoRA) or Θ_A (CondLoRA) at a seeded random draw: only B / Θ_B train.
        train_b: False freezes B (LoRA) or Θ_B (CondLoRA) at a seeded random draw while A / Θ_A start at
            zero and train (the A-only contrast of Zhu et al. 2024). train_a and train_b cannot both be false.
        init_a: how a frozen A is drawn: "orthogonal" (orthonormal rows), "gaussian" or "kaiming".
        init_b: how a frozen B (d_out × r) or CondLoRA's frozen d_in × r map (B = W0 · map) is drawn:
            "orthogonal" (orthonormal columns), "gaussian" (std 1/√r) or "kaiming" (U(±1/√r)).
        seed: seed of every adapter initialisation, so the same config gives the same adapter.
        modules_to_save: extra modules (e.g. the classifier head) left trainable and saved with the adapter.
        layers: only adapt modules whose layer index (first number in the module path) is in this list.
        module_types: filled by `apply_adapter`: per module type its form, d_in, d_out and generator key.
        fingerprint: filled by `apply_adapter`: targeted module name -> [d_out, d_in] of the base weight.
        base_model_name_or_path: the base model's hub id or folder, as the user names it (written into
            exports); when None, `apply_adapter` fills it from the model's config when known.
        library_version: filled on save.
        format_version: on-disk format of this library's adapters.
    """

    method: str = "condlora"
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "value"])
    cond_form: str = "general"
    train_a: bool = True
    train_b: bool = True
    init_a: str = "orthogonal"
    init_b: str = "orthogonal"
    seed: int = 0
    modules_to_save: list[str] | None = None
    layers: list[int] | None = None
    module_types: dict[str, dict[str, Any]] | None = None
    fingerprint: dict[str, list[int]] | None = None
    base_model_name_or_path: str | None = None
    library_version: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self._check_choice("method", ADAPTER_METHODS)
        self._check_choice("cond_form", COND_FORMS)
        self._check_choice("init_a", INIT_A)
        self._check_choice("init_b", INIT_B)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"r must be a positive integer, got {self.r!r}")
        if not _is_number(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"alpha must be a positive number, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("train_a", "train_b"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (self.train_a or self.train_b):
            raise ConfigError("train_a and train_b are both false: nothing would train; set one of them true")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self.target_modules = _names("target_modules", self.target_modules, allow_regex=True)
        if self.modules_to_save is not None:
            self.modules_to_save = _names("modules_to_save", self.modules_to_save, allow_regex=False)
        if self.layers is not None:
            if isinstance(self.layers, int):
                self.layers = [self.layers]
            if not isinstance(self.layers, list | tuple) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
            ):
                raise ConfigError(f"layers must be a list of non-negative integers, got {self.layers!r}")
            self.layers = sorted(set(self.layers))
        self._check_recorded()
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"format_version {self.format_version} is newer than this library understands "
                f"({FORMAT_VERSION}); upgrade condlora"
            )

    def _check_recorded(self) -> None:
        """Type checks of the fields that apply_adapter / save_adapter fill in."""
        if isinstance(self.format_version, bool) or not isinstance(self.format_version, int):
            raise ConfigError(f"format_version must be an integer, got {self.format_version!r}")
        for name in ("base_model_name_or_path", "library_version"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.module_types is not None and not (
            isinstance(self.module_types, dict) and all(isinstance(v, dict) for v in self.module_types.values())
        ):
            raise ConfigError(f"module_types must map module types to objects, got {self.module_types!r}")
        fp = self.fingerprint
        if fp is not None and not (isinstance(fp, dict) and all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(d, int) and d > 0 for d in v) for v in fp.values()
        )):
            raise ConfigError(f"fingerprint must map module names to [d_out, d_in], got {fp!r}")

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")

    @property
    def scaling(self) -> float:
        """The factor alpha / r applied to B·A."""
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Build a config from `to_dict` output; unknown fields are an error naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"adapter config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config field(s): {', '.join(unknown)}")
        return cls(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(field_name: str, value: Any, allow_regex: bool) -> list[str] | str:
    if isinstance(value, str):
        if allow_regex:
            if not value:
                raise ConfigError(f"{field_name} must not be empty")
            return value
        value = [value]
    if isinstance(value, tuple | set):
        value = sorted(value) if isinstance(value, set) else list(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{field_name} must be a non-empty list of module names, got {value!r}")
    return value
