"""PEFT configs of the VeRA and FourierFT rows (`condlora train --method vera | vera-r1024 | fourierft`).

The random parts of both methods come from the run's seed, so seeds differ as LoRA's and CondLoRA's do:
VeRA's shared frozen A and B (`projection_prng_key`, saved with the adapter) and FourierFT's frequencies
(`random_loc_seed`). Everything else is PEFT's default (VeRA: d_initial 0.1; FourierFT: a normal-initialized
spectrum). PEFT keeps VeRA's A and B and FourierFT's frequency indices as buffers, never as parameters, so
only the per-layer vectors (VeRA) and spectral coefficients (FourierFT) train and count.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, require


def peft_config(kind: str, sizes: dict[str, Any], dropout: float, target_modules: list[str], saved: list[str],
                seed: int):
    """The `peft.VeraConfig` or `peft.FourierFTConfig` of a row; `sizes` holds r, n_frequency and scaling."""
    require("peft", f"method '{kind}' (real PEFT)", "peft")
    common = {"task_type": "SEQ_CLS", "target_modules": list(target_modules), "modules_to_save": list(saved)}
    if kind == "vera":
        from peft import VeraConfig

        return VeraConfig(r=sizes["r"], vera_dropout=dropout, projection_prng_key=seed, save_projection=True,
                          **common)
    if dropout:
        raise ConfigError(f"FourierFT has no dropout; got dropout={dropout}")
    from peft import FourierFTConfig

    return FourierFTConfig(n_frequency=sizes["n_frequency"], scaling=sizes["scaling"], random_loc_seed=seed,
                           **common)
