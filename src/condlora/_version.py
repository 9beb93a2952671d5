"""condlora's version, written once: in pyproject.toml, read from the installed package's metadata."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # there in a source tree only


def read_version() -> str:
    """The installed distribution's version; for an uninstalled source tree, its pyproject.toml's."""
    try:
        return metadata.version("condlora")
    except metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"
    return project["version"] if project.get("name") == "condlora" else "0+unknown"


__version__ = read_version()
