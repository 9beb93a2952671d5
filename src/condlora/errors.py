"""Exceptions raised for user mistakes: the CLI turns them into one-line messages (exit code 2)."""


class CondLoRAError(Exception):
    """Base class for every error caused by bad input rather than a bug."""


class ConfigError(CondLoRAError, ValueError):
    """An invalid configuration value; the message names the field."""


class TargetError(CondLoRAError, ValueError):
    """Target modules that match nothing, or match modules we cannot adapt."""


class AdapterLoadError(CondLoRAError):
    """An adapter folder that is missing, corrupt, or made for another base model."""
