"""`AdapterTrainer`: `transformers.Trainer` that also resumes from, and reloads the best of, adapter checkpoints.

The stock `Trainer` already saves adapter-only folders (the adapted model's `save_pretrained` does it), but
it can read back only full models and PEFT models: `resume_from_checkpoint` and `load_best_model_at_end`
fail on a condlora checkpoint. This subclass loads those two itself and changes nothing else.
Importing it imports `transformers.Trainer` (and so accelerate).
"""

from __future__ import annotations

from torch import nn
from transformers import Trainer

from .serialization import is_adapter_dir, load_adapter_state


class AdapterTrainer(Trainer):
    """A drop-in `transformers.Trainer` for models adapted with `apply_adapter` / `load_adapter`."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Load a condlora checkpoint's adapter into the model; anything else as `Trainer` does."""
        if is_adapter_dir(resume_from_checkpoint):  # a clear error if the model has no adapter
            load_adapter_state(self.model if model is None else model, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        """Load the best checkpoint's adapter (`load_best_model_at_end=True`); anything else as `Trainer` does."""
        best = self.state.best_model_checkpoint
        if best and is_adapter_dir(best):
            load_adapter_state(self.model, best)
        else:
            super()._load_best_model()
