"""The encoded dataset: a folder of memory-mapped id/label arrays with fixed splits.

Layout written by ``ondevice prepare`` / ``ondevice generate`` (read here)::

    DATA_DIR/
      schema.json           fields, vocabularies, task (see ondevice.schema)
      prepare.json          row counts, vocab sizes, OOV rates, timings, options
      train/ids.npy         int32 [rows, fields]   (CTR: every field; top-K: user, item)
      train/labels.npy      float32 [rows]         (CTR only; 0/1)
      val/...  test/...     same arrays for the other splits

Arrays are ``.npy`` files opened with ``mmap_mode="r"``: training touches only the rows
of each batch, so memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.errors import BadInputError, SchemaMismatchError
from ondevice.io import read_json
from ondevice.schema import Schema

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: ``ids`` int32 ``[rows, fields]`` and, for CTR, ``labels`` float32 ``[rows]``."""

    name: str
    ids: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class EncodedDataset:
    """Read access to a prepared dataset folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadInputError(f"dataset folder not found: {self.root}; create it with `ondevice prepare` or `ondevice generate`")
        schema_path = self.root / "schema.json"
        if not schema_path.is_file():
            raise BadInputError(f"{self.root} has no schema.json; it is not a prepared dataset (run `ondevice prepare`)")
        self.schema = Schema.load(schema_path)
        info = self.root / "prepare.json"
        self.info = read_json(info, what="prepare.json") if info.is_file() else {}
        self._splits: dict[str, Split] = {}

    @property
    def task(self) -> str:
        return self.schema.task

    def has_split(self, name: str) -> bool:
        return (self.root / name / "ids.npy").is_file()

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise BadInputError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name in self._splits:
            return self._splits[name]
        ids_path = self.root / name / "ids.npy"
        if not ids_path.is_file():
            raise BadInputError(f"{self.root} has no {name} split ({ids_path} missing); re-run `ondevice prepare`")
        try:
            ids = np.load(ids_path, mmap_mode="r")
        except ValueError as err:
            raise BadInputError(f"{ids_path} is corrupt ({err}); re-run `ondevice prepare`") from None
        if ids.ndim != 2 or ids.shape[1] != self.schema.num_fields:
            raise SchemaMismatchError(
                f"{ids_path}: shape {ids.shape} does not match the schema's {self.schema.num_fields} fields; re-run `ondevice prepare`"
            )
        labels = None
        if self.task == "ctr":
            labels_path = self.root / name / "labels.npy"
            if not labels_path.is_file():
                raise BadInputError(f"{labels_path} missing; re-run `ondevice prepare`")
            labels = np.load(labels_path, mmap_mode="r")
            if labels.shape[0] != ids.shape[0]:
                raise BadInputError(f"{name}: {ids.shape[0]} id rows but {labels.shape[0]} labels; re-run `ondevice prepare`")
        split = Split(name, ids, labels)
        self._splits[name] = split
        return split

    def check_trainable(self) -> None:
        """Refuse, in one line naming the problem, a dataset that training cannot use.

        Training early-stops and picks its checkpoint on validation, so it needs training and
        validation rows, and (CTR) both classes in each: with one class AUC is undefined and no
        epoch is ever "best" (which used to end in "checkpoint not found").
        """
        for name in ("train", "val"):
            if not self.has_split(name):
                continue  # a missing split file is reported by split() with its own message
            split = self.split(name)
            fix = ("give more rows or smaller --val-fraction/--test-fraction" if name == "train" else
                   "re-run `ondevice prepare` with --val-fraction > 0 (early stopping and the checkpoint choice "
                   "need validation rows)")
            if len(split) == 0:
                raise BadInputError(f"{self.root}: the {name} split is empty (0 rows); {fix}")
            if split.labels is not None:
                lo, hi = _label_range(split.labels)
                if lo == hi:
                    raise BadInputError(
                        f"{self.root}: every {name} label is {lo:g} ({len(split):,} rows): AUC is undefined and no "
                        f"epoch can be chosen; a CTR {name} split needs clicks and non-clicks (check the label column "
                        "or use a larger/other split)")

    def identity(self) -> dict[str, Any]:
        """What makes this dataset *this* dataset: schema fingerprint, rows per split, content hash.

        ``content_sha256`` hashes each split file's size and up to 64 evenly spaced 64 KiB
        blocks (the whole file below 4 MiB): a few milliseconds on any size, and different
        data of the same shape changes it. ``train --resume`` refuses a dataset whose
        identity differs from the checkpoint's.
        """
        h = hashlib.sha256()
        rows: dict[str, int] = {}
        for name in SPLITS:
            if not self.has_split(name):
                continue
            rows[name] = len(self.split(name))
            for fname in ("ids.npy", "labels.npy"):
                path = self.root / name / fname
                if path.is_file():
                    h.update(f"{name}/{fname}".encode())
                    _hash_sampled(h, path)
        return {"schema_fingerprint": self.schema.fingerprint(), "rows": rows, "content_sha256": h.hexdigest()}

    def select_fields(self, keep: Sequence[int]) -> FieldSelectedDataset:
        """A read-only view over the kept fields (feature selection); see :class:`FieldSelectedDataset`."""
        return FieldSelectedDataset(self, keep)

    def __repr__(self) -> str:
        sizes = {s: len(self.split(s)) for s in SPLITS if self.has_split(s)}
        return f"EncodedDataset({str(self.root)!r}, task={self.task!r}, fields={self.schema.num_fields}, rows={sizes})"


def _label_range(labels: np.ndarray, *, chunk: int = 1 << 22) -> tuple[float, float]:
    """``(min, max)`` of a (memory-mapped) label array, read in bounded chunks."""
    lo, hi = np.inf, -np.inf
    for start in range(0, len(labels), chunk):
        part = np.asarray(labels[start:start + chunk])
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
        if lo != hi:
            break
    return lo, hi


def _hash_sampled(h: Any, path: Path, *, blocks: int = 64, block: int = 1 << 16) -> None:
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        if size <= blocks * block:
            h.update(fh.read())
            return
        step = (size - block) // (blocks - 1)
        for i in range(blocks):
            fh.seek(i * step)
            h.update(fh.read(block))


class FieldColumns:
    """The kept columns of a ``[rows, fields]`` ids array, read per access.

    Indexing rows (``cols[rows]``, ``cols[a:b]``, ``cols[i]``) reads those rows of the
    underlying memmap and returns their kept columns; ``np.asarray(cols)`` materialises
    the whole ``[rows, len(keep)]`` array (what ``in_memory_ctr`` does for small splits).
    """

    def __init__(self, base: np.ndarray, keep: Sequence[int]) -> None:
        self._base = base
        self._keep = np.asarray(keep, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self._base.shape[0]), len(self._keep))

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self._base.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):  # noqa: ANN001 - numpy index
        if isinstance(key, tuple):
            rows, *rest = key
            return self[rows][(..., *rest)] if rest else self[rows]
        return np.asarray(self._base[key])[..., self._keep]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - numpy protocol
        out = np.asarray(self._base)[:, self._keep]
        return out if dtype is None else out.astype(dtype, copy=False)


class FieldSelectedDataset(EncodedDataset):
    """``base`` restricted to the fields ``keep`` (in that order): a read-only view.

    ``schema`` is ``base.schema.select_fields(keep)``; ``split(name).ids`` is a
    :class:`FieldColumns` over the base memmap (no copy on disk or in memory until rows are
    read); labels are the base's. ``root`` stays the base folder (what a run records as its
    ``data_dir``, with the kept field names beside it).
    """

    def __init__(self, base: EncodedDataset, keep: Sequence[int]) -> None:  # noqa: D107 - no disk read
        if base.task != "ctr":
            raise BadInputError(f"feature selection applies to CTR data; {base.root} is {base.task} data")
        self.base = base.base if isinstance(base, FieldSelectedDataset) else base
        parent_keep = base.keep if isinstance(base, FieldSelectedDataset) else None
        self.schema = base.schema.select_fields(keep)  # validates keep
        self.keep = [int(i) for i in keep] if parent_keep is None else [parent_keep[int(i)] for i in keep]
        self.root = self.base.root
        self.info = self.base.info
        self._splits = {}

    def has_split(self, name: str) -> bool:
        return self.base.has_split(name)

    def split(self, name: str) -> Split:
        if name not in self._splits:
            s = self.base.split(name)
            self._splits[name] = Split(s.name, FieldColumns(s.ids, self.keep), s.labels)  # type: ignore[arg-type]
        return self._splits[name]

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, kept={self.schema.field_names})"
