"""Cache locations, stable hashing and atomic file writes.

Everything expensive (decoded datasets, trained models, defense results) is stored under
``cache_dir()`` with a name derived from ``config_hash`` of everything that determines it.
Writes go to a temporary file in the same folder and are renamed into place, so an interrupted
run never leaves a half-written file behind; a file that fails to load is rebuilt, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """``$UPGP_CACHE`` if set, else ``.cache/`` in the project checkout, else ``~/.cache/upgp``."""
    if os.environ.get("UPGP_CACHE"):
        path = Path(os.environ["UPGP_CACHE"])
    elif (_PROJECT_ROOT / "pyproject.toml").exists():
        path = _PROJECT_ROOT / ".cache"
    else:
        path = Path.home() / ".cache" / "upgp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.asdict(obj)
        # fields added later are hashed only where they differ from the behaviour they added to
        # (``HASH_OMITS``, name -> that value), so the keys of configs made before them hold
        for name, before in getattr(obj, "HASH_OMITS", {}).items():
            if fields.get(name, object()) == before:
                del fields[name]
        return _jsonable(fields)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable hex digest of JSON-serialisable parts (dataclasses and dicts included)."""
    blob = json.dumps(_jsonable(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path: Path | None, flag: str, folder: bool = False) -> None:
    """Fail before any work, in one line, where ``path`` (a file, or a ``folder``) cannot be
    written: its folder is created if missing and a scratch file is made and removed there."""
    if path is None:
        return
    if not folder and path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    where = path if folder else path.parent
    existing = next(p for p in (where, *where.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {path} cannot be written ({existing} is a file, not a folder); "
                         "choose a path in a writable folder")
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=where, prefix=".upgp-write-check-")
        os.close(fd)
        os.unlink(scratch)
    except OSError as err:
        raise ValueError(f"{flag} {path} cannot be written ({err.strerror or err}); "
                         "choose a path in a writable folder") from None


CACHE_FORMAT = 1  # the layout of what save_tensors writes; a file without the field is format 1


class CacheFormatError(ValueError):
    """A cache file written in another cache format (by another version of this package)."""


def save_tensors(path: Path, obj: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors and plain values, with its cache format."""
    atomic_write(path, lambda tmp: torch.save({**obj, "cache_format": CACHE_FORMAT}, tmp))


def load_tensors(path: Path) -> dict[str, Any] | None:
    """Load what ``save_tensors`` wrote, safely (``weights_only=True``).

    Returns None when the file is missing; a corrupt file is reported, deleted and treated as
    missing, so the caller rebuilds it. A file of another cache format raises
    ``CacheFormatError`` (it is left in place: it may be another version's valid result).
    """
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise ValueError(f"expected a dict, found {type(obj).__name__}")
    except Exception as err:  # any failure to load means the cache cannot be trusted
        warnings.warn(f"corrupt cache file {path} ({err}); rebuilding it", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    found = obj.pop("cache_format", 1)
    if found != CACHE_FORMAT:
        raise CacheFormatError(
            f"cache file {path} is in cache format {found!r}, this upgp reads format "
            f"{CACHE_FORMAT}: delete the file to rebuild it, or set UPGP_CACHE to another folder")
    return obj


def load_json(path: Path) -> Any | None:
    """Load what ``write_json`` wrote; None when missing. A corrupt file is reported, deleted and
    treated as missing, like ``load_tensors``."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        warnings.warn(f"corrupt cache file {path} ({err}); rebuilding it", stacklevel=2)
        path.unlink(missing_ok=True)
        return None


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(_jsonable(obj), indent=2, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
