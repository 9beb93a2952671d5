"""Exceptions raised for user mistakes: the CLI turns them into one-line messages (exit code 2)."""

import importlib
from types import ModuleType


class CondLoRAError(Exception):
    """Base class for every error caused by bad input rather than a bug."""


class ConfigError(CondLoRAError, ValueError):
    """An invalid configuration value; the message names the field."""


class TargetError(CondLoRAError, ValueError):
    """Target modules that match nothing, or match modules we cannot adapt."""


class AdapterLoadError(CondLoRAError):
    """An adapter folder that is missing, corrupt, or made for another base model."""


class MissingDependencyError(CondLoRAError, ImportError):
    """An optional package (an extra of condlora) that a feature needs is not installed."""


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Import and return optional `module`, or raise MissingDependencyError naming `feature` and the extra.

    Only the module's own absence is translated; an ImportError raised inside an installed module propagates.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top:
            raise
        raise MissingDependencyError(f"{feature} needs {top}: pip install 'condlora[{extra}]'") from None
