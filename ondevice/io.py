"""Atomic file and folder writes: temp file (or folder) + ``os.replace``.

Nothing ondevice writes is ever left half-written: a crash leaves either the old file or
the new one, and a failed run leaves no partial output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ondevice.errors import BadInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    The file gets the usual permissions (0666 & ~umask), not mkstemp's private 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Read JSON with a one-line error naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{what} {path} is not valid JSON ({err}); re-create it") from None


def check_writable_parent(out: Path) -> None:
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise BadInputError(f"cannot write {out}: {parent} is a file, not a folder; choose another --out")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInputError(f"cannot create output folder {parent}: {err.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise BadInputError(f"output folder {parent} is not writable; choose another --out")


def atomic_output_dir(out: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                      force: bool = False) -> contextlib.AbstractContextManager[Path]:
    """Yield a temp folder beside ``out``; on success it is renamed to ``out``.

    On any exception the temp folder is removed, so no partial output is left behind.
    ``kind`` names the command (its marker), ``inputs`` the paths ``out`` must stay clear of;
    an existing ``out`` is replaced only with ``force=True`` and a marker of the same kind.
    The rules (locking, markers, leftovers) live in ``ondevice.outputs``.
    """
    from ondevice.outputs import output_dir

    return output_dir(out, kind=kind, inputs=inputs, force=force)


def safe_child(parent: Path, name: str) -> Path:
    """``parent / name`` where ``name`` can never escape ``parent`` (no '/', '..', etc.)."""
    cleaned = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name).strip(".")
    if not cleaned:
        raise BadInputError(f"name {name!r} gives an empty folder name; use letters and digits")
    child = (parent / cleaned).resolve()
    if child.parent != parent.resolve():
        raise BadInputError(f"name {name!r} would escape {parent}")
    return parent / cleaned
