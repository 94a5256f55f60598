"""Output folders: never overwrite an input, never delete what is not ours, one writer at a time.

Every command that writes an ``--out`` folder goes through :func:`output_dir` (or, for
``train``'s ``RUN.partial`` scheme, through :func:`check_output` + :class:`OutputLock`):

1. **Inputs are safe.** An ``--out`` that is, contains, or lies inside one of the command's
   inputs is refused (paths compared after resolving symlinks and ``..``), with or without
   ``--force``.
2. **``--force`` removes only our own output.** Each finished output folder holds a marker
   file, :data:`MARKER`, naming the command that wrote it (its *kind*), written last. An
   existing ``--out`` is replaced only with ``--force`` *and* when it carries a marker of the
   same kind, or is an empty folder. Anything else (a data folder, a home directory, ``.``)
   is refused.
3. **One writer.** An exclusive ``fcntl.flock`` on ``.OUT.lock`` beside the output is held
   for the whole run; a second run into the same ``--out`` stops at once with "OUT is in use
   by PID N". The final rename re-checks: an ``--out`` that appeared during the run is never
   replaced without ``--force``.
4. **Nothing half-done survives.** Work goes to a hidden temp folder beside ``--out``
   (``.OUT.ondevice-XXXXXXXX.tmp``) that is renamed at the end; temp folders left by a
   killed run are removed by the next run into the same ``--out`` (under the lock, so never a
   live one). A folder whose marker is missing, or whose path is such a temp folder, is not a
   finished output (:func:`is_finished`), which ``verify`` checks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ondevice.errors import BadInputError, OutputExistsError

MARKER = ".ondevice-output.json"
MARKER_FORMAT = "ondevice-output"
_TMP_TAG = "ondevice-"
_TMP_RE = re.compile(r"^\..+\." + _TMP_TAG + r"[A-Za-z0-9_]{8}\.tmp$")


class OutputBusyError(BadInputError):
    """Another process holds the lock on this output folder."""


# ---------------------------------------------------------------------- inputs vs output
def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_vs_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an ``out`` that is, contains, or lies inside any input (after realpath)."""
    o = _resolve(out)
    for raw in inputs:
        if raw is None:
            continue
        i = _resolve(raw)
        if o == i:
            raise BadInputError(f"--out {out} is the input {raw}; choose another --out (nothing was written)")
        if _is_within(i, o):
            raise BadInputError(f"--out {out} contains the input {raw}; writing there could delete it, choose another --out")
        if _is_within(o, i):
            raise BadInputError(f"--out {out} lies inside the input {raw}; choose an --out outside it")


# ---------------------------------------------------------------------- markers
def marker_of(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a finished output folder, or ``None`` (missing, unreadable, malformed)."""
    path = Path(folder) / MARKER
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or not isinstance(data.get("kind"), str):
        return None
    return data


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Write the completion marker (last file of an output folder)."""
    from ondevice import __version__
    from ondevice.io import atomic_write_json

    # no timestamp: the same run gives byte-identical folders
    atomic_write_json(Path(folder) / MARKER, {"format": MARKER_FORMAT, "kind": kind, "complete": True,
                                              "ondevice_version": __version__})


def is_temp_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the temp folder of a run that did not finish (``.OUT.ondevice-*.tmp``, ``RUN.partial``)."""
    name = _resolve(path).name
    return bool(_TMP_RE.match(name)) or name.endswith(".partial")


def is_finished(folder: str | os.PathLike, kind: str | None = None) -> bool:
    """A finished output: carries a complete marker (of ``kind``) and is not a temp folder."""
    m = marker_of(folder)
    return bool(m and m.get("complete") is True and (kind is None or m["kind"] == kind)) and not is_temp_path(folder)


def check_replaceable(out: str | os.PathLike, kind: str, force: bool, *, hint: str = "") -> bool:
    """Whether ``out`` exists; raise unless it may be replaced (``force`` + same-kind marker or empty).

    ``hint`` is appended to the "already exists" message (e.g. "or --resume to continue it").
    """
    out = Path(out)
    if not os.path.lexists(out):
        return False
    if not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it{hint}")
    if out.is_symlink() or not out.is_dir():
        raise BadInputError(f"--out {out} is {'a symlink' if out.is_symlink() else 'a file'}, not an output folder; "
                            "--force replaces only a folder this command wrote; remove it yourself or choose another --out")
    m = marker_of(out)
    if m is not None and m["kind"] == kind:
        return True
    if m is None and not any(out.iterdir()):
        return True  # an empty folder: nothing to lose
    what = f"a `{m['kind']}` output" if m else "not an ondevice output (no marker)"
    raise BadInputError(f"--out {out} is {what}; --force replaces only a folder written by `ondevice {kind}`; "
                        "remove it yourself or choose another --out")


def check_output(out: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                 force: bool = False, hint: str = "") -> bool:
    """The checks a command runs before any work (repeated under the lock by :func:`output_dir`)."""
    check_out_vs_inputs(out, inputs)
    return check_replaceable(out, kind, force, hint=hint)


# ---------------------------------------------------------------------- lock
class OutputLock:
    """Exclusive ``flock`` on ``.OUT.lock`` beside ``out`` (created, and removed on release).

    The lock file records the holder's PID for the "in use by PID N" message. After locking,
    the file on disk must still be the locked one (a releasing holder unlinks it), else retry.
    """

    def __init__(self, out: str | os.PathLike) -> None:
        out = Path(os.path.abspath(out))  # '.' and '..' have no name of their own
        self.out = out
        self.path = _resolve(out).parent / f".{out.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                try:
                    pid = self.path.read_text().strip() or "?"
                except OSError:
                    pid = "?"
                raise OutputBusyError(f"{self.out} is in use by PID {pid} (another ondevice run); "
                                      "wait for it to finish or choose another --out") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return self
        raise OutputBusyError(f"could not lock {self.out}; another process keeps replacing {self.path}")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------- the output folder
def remove_leftovers(out: str | os.PathLike) -> list[Path]:
    """Remove temp folders a killed run into ``out`` left beside it (call under the lock)."""
    out = Path(out)
    parent = _resolve(out).parent
    pattern = re.compile(r"^\." + re.escape(out.name) + r"\.(" + _TMP_TAG + r"[A-Za-z0-9_]{8}\.tmp|old)$")
    removed = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def output_dir(out: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
               force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success mark it finished and rename it to ``out``.

    Holds :class:`OutputLock` throughout; refuses unsafe ``out`` (module docstring); removes
    the temp folder on any exception, so no partial output is left behind.
    """
    from ondevice.io import check_writable_parent

    out = Path(os.path.abspath(out))  # '.' and '..' have no name of their own
    inputs = [i for i in inputs if i is not None]
    check_out_vs_inputs(out, inputs)
    check_writable_parent(out)
    with OutputLock(out):
        existed = check_replaceable(out, kind, force)
        remove_leftovers(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_TMP_TAG}", suffix=".tmp", dir=_resolve(out).parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs are ordinary folders
        try:
            yield tmp
            write_marker(tmp, kind)
            publish(tmp, out, kind=kind, force=force, existed=existed)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def publish(tmp: Path, out: Path, *, kind: str, force: bool, existed: bool) -> None:
    """Rename the finished ``tmp`` to ``out`` (under the lock), replacing ``out`` only if allowed.

    An ``out`` that did not exist when the run started is never replaced without ``force``.
    """
    if os.path.lexists(out):
        if not existed and not force:
            raise OutputExistsError(f"{out} appeared while this run was writing; nothing was replaced "
                                    "(pass --force to replace it)")
        check_replaceable(out, kind, True)
        backup = out.with_name(f".{out.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(out, backup)
        os.replace(tmp, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ---------------------------------------------------------------------- resumable output (OUT.partial)
PARTIAL_FORMAT = "ondevice-partial"
#: Inside ``OUT.partial``: what a resumed run needs (removed before the folder is published).
RESUME_DIR = "_resume"
_PARTIAL_RECORD = "run.json"


def partial_path(out: str | os.PathLike) -> Path:
    """``OUT.partial``: where a resumable command keeps its work until it finishes."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + ".partial")


def partial_record(partial: Path, kind: str) -> dict[str, Any] | None:
    """The record of an interrupted ``kind`` run in ``partial``; ``None`` when there is no such folder.

    An empty folder gives ``{}`` (nothing in it to lose). Anything else at that path (a file,
    a symlink, another command's or a foreign folder) is refused: it is not ours to reuse or remove.
    """
    if not os.path.lexists(partial):
        return None
    if partial.is_symlink() or not partial.is_dir():
        raise BadInputError(f"{partial} is {'a symlink' if partial.is_symlink() else 'a file'}, not an interrupted "
                            f"`ondevice {kind}` run; remove it yourself or choose another --out")
    if not any(partial.iterdir()):
        return {}
    try:
        with open(partial / RESUME_DIR / _PARTIAL_RECORD, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = None
    if record is None and (marker_of(partial) or {}).get("kind") == kind:
        return {}  # finished, stopped between its last steps (marker written, record removed): nothing to resume
    if not isinstance(record, dict) or record.get("format") != PARTIAL_FORMAT or record.get("kind") != kind \
            or not isinstance(record.get("settings"), dict):
        raise BadInputError(f"{partial} is not an interrupted `ondevice {kind}` run (no readable record); it is not "
                            "ours to reuse or remove: remove it yourself or choose another --out")
    return record


def partial_has_work(partial: Path) -> bool:
    """Whether ``partial`` holds finished work a resumed run would reuse (any file besides the record)."""
    resume = partial / RESUME_DIR
    return resume.is_dir() and any(p.is_file() and p.name != _PARTIAL_RECORD for p in resume.rglob("*"))


def _first_difference(saved: dict[str, Any], given: dict[str, Any]) -> str | None:
    for key in sorted(set(saved) | set(given)):
        if saved.get(key) != given.get(key):
            return key
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 90 else text[:87] + "..."


@contextlib.contextmanager
def resumable_output_dir(out: str | os.PathLike, *, kind: str, settings: dict[str, Any],
                         inputs: Iterable[str | os.PathLike | None] = (), force: bool = False, resume: bool = False,
                         labels: dict[str, str] | None = None,
                         options: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield ``OUT.partial``; on success mark it finished and rename it to ``out``.

    The rules of :func:`output_dir` hold (inputs safe, one writer: the lock on ``out`` is held
    throughout, ``--force`` removes only our own output), and work survives an interruption:

    * a run records ``settings`` (JSON-able: every option that shapes the result, the input's
      identity) in ``OUT.partial/_resume/run.json`` before any work; the command keeps what it
      finished under ``OUT.partial/_resume/`` as it goes;
    * a run that stops (exception, Ctrl-C, SIGKILL) leaves ``OUT.partial`` when it holds finished
      work; the next run into ``out`` refuses to start over unless ``force`` (or ``resume``);
    * ``resume=True`` continues it after checking that ``settings`` equal the recorded ones
      (a one-line error names the first that differs, with ``labels[key]`` as its name);
      ``options`` (the caller's arguments, JSON-able) are recorded for :func:`partial_options`;
    * on success ``_resume/`` is removed, the marker written and the folder renamed to ``out``
      (replacing ``out`` only as the *first* run was allowed to: with ``--force``, or when
      ``out`` existed when it started).
    """
    from ondevice.io import atomic_write_json, check_writable_parent

    out = Path(os.path.abspath(out))
    partial = partial_path(out)
    inputs = [i for i in inputs if i is not None]
    check_out_vs_inputs(out, inputs)
    check_out_vs_inputs(partial, inputs)
    check_writable_parent(out)
    settings = json.loads(json.dumps(settings))  # the form it is recorded in (tuples -> lists)
    with OutputLock(out):
        remove_leftovers(out)
        record = partial_record(partial, kind)
        if resume:
            if not record:
                finished = " (it is a finished run: nothing to resume)" if is_finished(out, kind) else ""
                raise BadInputError(f"nothing to resume: {partial} holds no interrupted run{finished}; "
                                    "start without --resume")
            key = _first_difference(record["settings"], settings)
            if key is not None:
                name = (labels or {}).get(key, key)
                raise BadInputError(f"--resume: the interrupted run in {partial} has {name} = "
                                    f"{_short(record['settings'].get(key))}, this run has {_short(settings.get(key))}; "
                                    "resume with the same inputs and options, or start over with --force")
            existed, allowed = bool(record.get("out_existed")), force or bool(record.get("force"))
            if os.path.lexists(out):
                if not existed and not allowed:
                    raise OutputExistsError(f"{out} appeared after the interrupted run started; pass --force to replace it")
                check_replaceable(out, kind, True)
        else:
            existed = check_replaceable(out, kind, force)
            allowed = force
            if record is not None:
                if record and partial_has_work(partial) and not force:
                    raise OutputExistsError(f"{partial} holds an interrupted run; pass --resume to continue it "
                                            "or --force to start over")
                shutil.rmtree(partial)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_TMP_TAG}", suffix=".tmp", dir=out.parent))
            try:
                os.chmod(tmp, 0o777 & ~_umask())
                (tmp / RESUME_DIR).mkdir()
                atomic_write_json(tmp / RESUME_DIR / _PARTIAL_RECORD, {
                    "format": PARTIAL_FORMAT, "kind": kind, "settings": settings, "options": options or {},
                    "out_existed": existed, "force": force})
                os.replace(tmp, partial)  # appears with its record, or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        try:
            yield partial
        except BaseException:
            if not partial_has_work(partial):
                shutil.rmtree(partial, ignore_errors=True)
            raise
        write_marker(partial, kind)
        shutil.rmtree(partial / RESUME_DIR)
        publish(partial, out, kind=kind, force=allowed, existed=existed)


def partial_options(out: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The arguments the interrupted ``kind`` run into ``out`` was started with (for ``--resume``)."""
    record = partial_record(partial_path(out), kind)
    if not record:
        raise BadInputError(f"nothing to resume: {partial_path(out)} holds no interrupted run; start without --resume")
    return dict(record.get("options") or {})


_crash_counts: dict[str, int] = {}


def crash_point(tag: str) -> None:
    """Test hook for resume: ``ONDEVICE_CRASH_AT=TAG:N`` SIGKILLs this process at the N-th ``crash_point(TAG)``.

    Lets a test kill a run at an exact step (``tests/test_compress_resume.py``); without the
    variable it does nothing.
    """
    spec = os.environ.get("ONDEVICE_CRASH_AT")
    if not spec:
        return
    want, _, nth = spec.rpartition(":")
    _crash_counts[tag] = _crash_counts.get(tag, 0) + 1
    if want == tag and nth.isdigit() and _crash_counts[tag] == int(nth):
        import signal
        import sys

        sys.stderr.write(f"crash point {tag}:{nth}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
