"""``prepare``: raw files -> an encoded dataset folder (see ``ondevice.data.dataset``).

The raw input is read **once**, chunk by chunk; memory grows with the number of *distinct*
values, never with the number of rows:

1. **read** — every row is assigned to a split; each vocabulary field's values get
   provisional ids (position in a running dictionary: pyarrow ``dictionary_encode`` of the
   chunk, ``index_in`` of the chunk's distinct values against the dictionary) and
   provisional ids are counted (``np.bincount``) on **training rows only**. Rows are
   spilled per split to temporary files in the output's temp folder.
2. **write** — the vocabulary is the values with ``count >= min_count`` ordered by
   frequency; a provisional -> final id map is applied to the spilled rows, which go to
   pre-sized ``.npy`` files by plain sequential writes (not a memory map, so the page
   cache of the output never counts as our RSS).

Encodings (``ondevice.schema`` convention: id 0 is every field's OOV row):

* ``vocab``: values seen at least ``min_count`` times **in the training split** get ids
  ``1..V-1``, most frequent first (ties: smaller value first); rarer values, values seen
  only in val/test, and new values at serving time get id 0.
* ``hash``: ``1 + blake2b(value) mod N`` (``ondevice.schema.stable_hash``); chosen per
  field with ``hash_buckets={"C3": 100_000}``.
* ``identity``: raw ids already dense and 0-based (implicit user/item ids): ``id = raw + 1``,
  vocabulary size ``max raw id over all files + 2``.

Splits:

* ``random``: row ``r`` (0-based over all inputs in order) goes to test when
  ``u(r) < test_fraction``, to val when ``u(r) < test_fraction + val_fraction``, else to train,
  where ``u`` is a seeded splitmix64 hash of ``r`` mapped to [0, 1). Deterministic by seed,
  independent of chunk size, approximately (not exactly) 80/10/10.
* ``given``: the input files are the splits, in order: ``train, test`` or
  ``train, val, test``. With two files, val is carved from train by the same seeded hash
  (``val_fraction`` of train rows).
* Top-K data with an identity user field: every user keeps at least one training
  interaction — the user's row with the largest hash ``u`` always stays in train — so
  val is "a seeded random ``val_fraction`` of each user's train interactions, keeping ≥ 1".
* ``leave-last-out`` (top-K, sequential data): the inputs, read in order, are each user's
  interactions in time order; a user's last interaction goes to test, the second-last to
  val, the rest to train. Users with fewer than 3 interactions stay entirely in train. This
  is SASRec's ``data_partition`` (Kang & McAuley, ICDM 2018, ``kang205/SASRec`` ``util.py``),
  also used by S3-Rec (Zhou et al., CIKM 2020). Decided between the passes from the spilled
  rows (per-user last/second-last row index), so memory grows with users, not rows.

Duplicates (top-K): rows that repeat an earlier ``(user, item)`` pair are counted over all
inputs (``prepare.json`` ``duplicates``; a warning line) and, with ``drop_duplicates``,
dropped before the split is decided (the first occurrence stays). Counting partitions the
pairs into buckets of at most :data:`DUP_BUCKET_ROWS` rows on disk, so memory stays bounded.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ondevice import __version__
from ondevice.data.dataset import SPLITS
from ondevice.data.formats import get_format
from ondevice.data.formats.base import Chunk, FieldSpec, RawFormat, check_input, dictionary_encode
from ondevice.errors import BadInputError, DataFormatError
from ondevice.io import atomic_output_dir, atomic_write_json
from ondevice.schema import Field, Schema, stable_hash

DEFAULT_CHUNK_ROWS = 1 << 18
SPLIT_MODES = ("random", "given", "leave-last-out")
#: leave-last-out: a user needs this many interactions to give one to val and one to test (SASRec).
LLO_MIN_INTERACTIONS = 3
#: duplicate detection holds at most this many (key, row) pairs in memory at once.
DUP_BUCKET_ROWS = 1 << 21
ProgressFn = Callable[[str, int], None]

_TRAIN, _VAL, _TEST = 0, 1, 2


# --------------------------------------------------------------------------- split hash
def split_uniform(seed: int, rows: np.ndarray) -> np.ndarray:
    """Seeded uniform [0, 1) per global row index (splitmix64 finaliser; no state)."""
    z = rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _Splitter:
    """Row -> split code (0 train, 1 val, 2 test); ``eligible`` rows were decided by ``u``."""

    def __init__(self, mode: str, n_files: int, seed: int, val: float, test: float) -> None:
        self.mode, self.n_files, self.seed, self.val, self.test = mode, n_files, seed, val, test

    def code_of_u(self, u: np.ndarray, file_index: int) -> np.ndarray:
        if self.mode == "random":
            return np.where(u < self.test, _TEST, np.where(u < self.test + self.val, _VAL, _TRAIN)).astype(np.int8)
        return np.where(u < self.val, _VAL, _TRAIN).astype(np.int8)  # given: carving val from train

    def assign(self, file_index: int, row0: int, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
        u = split_uniform(self.seed, np.arange(row0, row0 + n, dtype=np.uint64))
        if self.mode == "leave-last-out":  # decided between the passes (see _leave_last_out)
            return np.full(n, _TRAIN, dtype=np.int8), u, False
        if self.mode == "random":
            return self.code_of_u(u, file_index), u, True
        if self.n_files == 3:
            return np.full(n, file_index, dtype=np.int8), u, False
        if file_index == 1:
            return np.full(n, _TEST, dtype=np.int8), u, False
        return self.code_of_u(u, file_index), u, True

    def eligible(self, split_code: int) -> bool:
        """Whether rows spilled to this split were placed by the hash ``u`` (and may move to train)."""
        if self.mode == "random":
            return True
        return self.mode == "given" and self.n_files == 2 and split_code != _TEST


# --------------------------------------------------------------------------- encoding
def _token(v: Any) -> str:
    """The string a raw value is stored as in ``schema.json`` (missing -> ``""``)."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="backslashreplace")  # non-UTF-8 bytes stay distinct values
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class _FieldPlan:
    """One field's encoder.

    Pass 1 gives every value a *provisional* id (its position in a running dictionary of
    all values seen, in first-seen order) and counts provisional ids on training rows;
    :meth:`finalize` orders the values kept by ``min_count`` by frequency and builds the
    provisional -> final id map that pass 2 applies. Hash and identity ids are final at once.
    """

    def __init__(self, spec: FieldSpec, encoding: str, hash_buckets: int | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.encoding = encoding
        self.hash_buckets = hash_buckets
        self.seen: pa.Array | None = None  # vocab: running dictionary (provisional id = position)
        self.counts = np.zeros(0, dtype=np.int64)  # vocab: train count per provisional id
        self.vocab: pa.Array | None = None
        self.remap: np.ndarray | None = None
        self.distinct = 0
        self.train_rows = self.train_oov = self.max_count = 0  # vocab: set by finalize (min_count check)
        self.max_id = -1
        self.hash_cache: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        if self.encoding == "vocab":
            return 1 + (len(self.vocab) if self.vocab is not None else 0)
        if self.encoding == "hash":
            return 1 + int(self.hash_buckets or 0)
        return self.max_id + 2

    # ------------------------------------------------------------------ pass 1
    def provisional(self, col: pa.Array | np.ndarray, train: np.ndarray, chunk: Chunk) -> np.ndarray:
        if self.encoding == "identity":
            raw = np.asarray(col, dtype=np.int64)
            self._check_identity(raw, chunk)
            return (raw + 1).astype(np.int32)
        if self.encoding == "hash":
            return self._hash(col)
        arr = pa.array(col) if isinstance(col, np.ndarray) else col
        if self.seen is not None and arr.type != self.seen.type:
            arr = arr.cast(self.seen.type)
        chunk_values, indices = dictionary_encode(arr)
        if self.seen is None:
            mapping = np.arange(len(chunk_values), dtype=np.int32)
            self.seen = chunk_values
        else:
            pos = pc.index_in(chunk_values, value_set=self.seen, skip_nulls=False)
            new = pc.is_null(pos)
            n_new = int(pc.sum(new).as_py() or 0)
            mapping = pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int32)
            if n_new:
                new_np = new.to_numpy(zero_copy_only=False)
                mapping[new_np] = np.arange(len(self.seen), len(self.seen) + n_new, dtype=np.int32)
                self.seen = pa.concat_arrays([self.seen, chunk_values.filter(new)])
        prov = mapping[indices]
        counts = np.bincount(prov[train], minlength=len(self.seen))
        if self.counts.size < counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(counts.size - self.counts.size, dtype=np.int64)])
        self.counts += counts
        return prov

    def _check_identity(self, col: np.ndarray, chunk: Chunk) -> None:
        if len(col) == 0:
            return
        if int(col.min()) < 0:
            i = int(np.flatnonzero(col < 0)[0])
            raise DataFormatError(f"{chunk.locate(i)}: {self.name} id {int(col[i])} is negative; identity ids must be >= 0")
        hi = int(col.max())
        if hi >= np.iinfo(np.int32).max - 1:
            i = int(np.argmax(col))
            raise DataFormatError(f"{chunk.locate(i)}: {self.name} id {hi} does not fit int32; use --hash {self.name}=N")
        self.max_id = max(self.max_id, hi)

    def _hash(self, col: pa.Array | np.ndarray) -> np.ndarray:
        arr = pa.array(col) if isinstance(col, np.ndarray) else col
        values, indices = dictionary_encode(arr)
        buckets = int(self.hash_buckets or 1)
        cache = self.hash_cache
        mapping = np.empty(len(values), dtype=np.int32)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = values.cast(pa.binary())  # to_pylist on non-UTF-8 text raises; bytes -> _token decodes safely
        for k, v in enumerate(values.to_pylist()):
            tok = _token(v)
            hid = cache.get(tok)
            if hid is None:
                hid = stable_hash(tok, buckets)
                if len(cache) < 4_000_000:
                    cache[tok] = hid
            mapping[k] = hid
        return mapping[indices]

    # ------------------------------------------------------------------ between passes
    def finalize(self, min_count: int) -> None:
        """Keep values with ``count >= min_count`` on train; ids by frequency (ties: value)."""
        if self.encoding != "vocab":
            return
        if self.seen is None:
            self.vocab, self.remap = None, np.zeros(1, dtype=np.int32)
            return
        counts = self.counts
        self.distinct = int(np.count_nonzero(counts))
        kept = np.flatnonzero(counts >= min_count)
        self.train_rows = int(counts.sum())
        self.train_oov = self.train_rows - int(counts[kept].sum())
        self.max_count = int(counts.max()) if counts.size else 0
        table = pa.table({"v": self.seen.take(pa.array(kept)), "c": pa.array(counts[kept])})
        order = np.asarray(pc.sort_indices(table, sort_keys=[("c", "descending"), ("v", "ascending")]))
        self.vocab = table.column("v").take(pa.array(order)).combine_chunks()
        self.remap = np.zeros(len(self.seen), dtype=np.int32)
        self.remap[kept[order]] = np.arange(1, len(kept) + 1, dtype=np.int32)
        self.seen, self.counts = None, np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ pass 2
    def final(self, prov: np.ndarray) -> np.ndarray:
        return self.remap[prov] if self.encoding == "vocab" else prov  # type: ignore[index]

    def to_field(self) -> Field:
        values = None
        if self.encoding == "vocab":
            try:
                values = [_token(v) for v in (self.vocab.to_pylist() if self.vocab is not None else [])]
            except UnicodeDecodeError:
                raise DataFormatError(f"field {self.name!r} has values that are not UTF-8 text; re-encode the file to UTF-8") from None
        return Field(
            name=self.name,
            vocab_size=self.vocab_size,
            encoding=self.encoding,  # type: ignore[arg-type]
            values=values,
            hash_buckets=self.hash_buckets if self.encoding == "hash" else None,
            transform=self.spec.transform,
            role=self.spec.role,
            offset=0 if self.encoding == "identity" else None,
        )


class _NpyWriter:
    """A pre-sized ``.npy`` file filled by sequential writes (no memory map, flat RSS)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )
        self.rows = 0

    def write(self, arr: np.ndarray) -> None:
        if arr.shape[0]:
            self.fh.write(memoryview(np.ascontiguousarray(arr, dtype=self.dtype)).cast("B"))
            self.rows += arr.shape[0]

    def close(self) -> None:
        self.fh.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"internal error: {self.path} got {self.rows} rows, planned {self.shape[0]}")


class _RawSpill:
    """Rows of one split from pass 1: provisional ids, labels, global row index (raw files)."""

    def __init__(self, folder: Path, name: str, n_fields: int, *, labels: bool, rowidx: bool) -> None:
        self.n_fields = n_fields
        self.paths = {"ids": folder / f".{name}.ids.tmp"}
        if labels:
            self.paths["labels"] = folder / f".{name}.labels.tmp"
        if rowidx:
            self.paths["rowidx"] = folder / f".{name}.rowidx.tmp"
        self.files = {k: open(p, "wb") for k, p in self.paths.items()}  # noqa: SIM115
        self.rows = 0

    def write(self, ids: np.ndarray, labels: np.ndarray | None, rowidx: np.ndarray | None) -> None:
        self.files["ids"].write(memoryview(np.ascontiguousarray(ids, dtype=np.int32)).cast("B"))
        if labels is not None and "labels" in self.files:
            self.files["labels"].write(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        if rowidx is not None and "rowidx" in self.files:
            self.files["rowidx"].write(np.ascontiguousarray(rowidx, dtype=np.int64).tobytes())
        self.rows += ids.shape[0]

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def read(self, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        handles = {k: open(p, "rb") for k, p in self.paths.items()}  # noqa: SIM115
        try:
            done = 0
            while done < self.rows:
                n = min(chunk_rows, self.rows - done)
                ids = np.fromfile(handles["ids"], dtype=np.int32, count=n * self.n_fields).reshape(n, self.n_fields)
                labels = np.fromfile(handles["labels"], dtype=np.float32, count=n) if "labels" in handles else None
                rowidx = np.fromfile(handles["rowidx"], dtype=np.int64, count=n) if "rowidx" in handles else None
                done += n
                yield ids, labels, rowidx
        finally:
            for fh in handles.values():
                fh.close()

    def remove(self) -> None:
        for p in self.paths.values():
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- public API
def _as_paths(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        return [Path(inputs)]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise BadInputError("no input files given")
    return paths


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def prepare(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    format: str,
    min_count: int = 1,
    hash_buckets: Mapping[str, int] | None = None,
    split: str = "random",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    force: bool = False,
    progress: ProgressFn | None = None,
    format_options: Mapping[str, Any] | None = None,
    threads: int | None = None,
    drop_duplicates: bool = False,
) -> dict[str, Any]:
    """Encode raw files into ``out_dir`` (``schema.json``, ``prepare.json``, split arrays).

    Parameters
    ----------
    inputs : one file, or several. ``split="random"``/``"leave-last-out"``: all files are read
        in order as one table. ``split="given"``: ``[train, test]`` or ``[train, val, test]``.
    split : ``random``, ``given`` or ``leave-last-out`` (top-K: each user's last interaction
        in file order to test, the second-last to val; users with < 3 stay in train).
    format : a name from ``ondevice.data.formats.FORMATS`` (criteo, avazu, libfm,
        movielens, implicit, csv).
    min_count : a value must occur this often in the training split to get its own id.
    hash_buckets : ``{field: N}`` hashes a field into ``N`` buckets (ids ``1..N``).
    val_fraction, test_fraction : split fractions (``random``; ``given`` carves val from
        train with ``val_fraction`` when only two files are given).
    chunk_rows : rows per chunk (peak memory is proportional to it, not to the file).
    force : replace an existing ``out_dir``.
    progress : ``progress(stage, rows_done)`` after every chunk; stage is ``read`` (pass 1)
        or ``write`` (pass 2).
    format_options : format-specific options (``ondevice.data.formats`` lists them).
    drop_duplicates : top-K: drop rows repeating an earlier ``(user, item)`` pair.

    Returns the ``prepare.json`` content: ``ondevice_version, format, task, inputs, split
    {mode, seed, val_fraction, test_fraction, files}, options {min_count, hash_buckets,
    chunk_rows, format_options}, rows {train, val, test}, total_rows, fields, encoding,
    vocab_size, distinct_train_values, oov_rate {split: {field: rate}}, positive_rate
    {split: rate} (None for top-K), duplicates {rows, dropped} (top-K; None for CTR),
    leave_last_out {users, held_out_users, train_only_users} (None for other splits),
    schema_fingerprint, elapsed_s, rows_per_s`` (input rows
    / wall seconds of the whole call) and ``peak_rss_mb`` (the process's peak RSS so far,
    ``ru_maxrss``; run in a fresh process to measure ``prepare`` alone) and ``warnings`` (one
    line each: empty or single-class val/test splits, fields ``min_count`` turns into OOV).

    Raises ``BadInputError``/``DataFormatError`` (one line naming the file and line) and
    leaves no output folder (and no temp folder) behind on failure.
    """
    t0 = time.perf_counter()
    paths = _as_paths(inputs)
    _check_options(split, len(paths), min_count, val_fraction, test_fraction, chunk_rows)
    fmt = get_format(format, format_options)
    paths = [check_input(p) for p in paths]
    layout = _plan_layout(fmt, paths, hash_buckets, split, drop_duplicates)
    splitter = _Splitter(split, len(paths), seed, val_fraction, test_fraction)
    n_threads = max(1, threads or min(4, os.cpu_count() or 1))
    with atomic_output_dir(out_dir, kind="prepare", inputs=paths, force=force) as tmp, ThreadPoolExecutor(n_threads) as pool:
        read = _read_pass(layout, paths, splitter, tmp, pool, chunk_rows, progress)
        left = _decide_left_out_rows(layout, read, splitter, tmp, split=split, seed=seed,
                                     drop_duplicates=drop_duplicates, chunk_rows=chunk_rows)
        for plan in layout.plans:
            plan.finalize(int(min_count))
        warnings = _warnings(layout, read, left, paths, int(min_count), drop_duplicates)
        oov = _write_pass(layout, read, left, splitter, tmp, pool, split=split, seed=seed, chunk_rows=chunk_rows,
                          progress=progress)
        schema_dict = _write_schema(layout, tmp)
        elapsed = time.perf_counter() - t0
        total = int(read.rows.sum())  # rows kept (dropped duplicates are not in any split)
        info: dict[str, Any] = {
            "ondevice_version": __version__,
            "format": fmt.name,
            "task": fmt.task,
            "inputs": [str(p) for p in paths],
            "split": _split_info(split, seed, val_fraction, test_fraction, paths),
            "options": {"min_count": int(min_count), "hash_buckets": layout.hash_buckets, "chunk_rows": int(chunk_rows),
                        "format_options": dict(format_options or {}), "drop_duplicates": bool(drop_duplicates)},
            **_counts_info(layout, read, oov),
            "duplicates": left.duplicates,
            "leave_last_out": left.llo_info,
            "schema_fingerprint": schema_dict["fingerprint"],
            "elapsed_s": round(elapsed, 3),
            "rows_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
            "peak_rss_mb": round(_peak_rss_bytes() / 2**20, 1),
            "warnings": warnings,
        }
        atomic_write_json(tmp / "prepare.json", info)
    return info


# --------------------------------------------------------------------------- prepare's steps
def _check_options(split: str, n_paths: int, min_count: int, val_fraction: float, test_fraction: float,
                   chunk_rows: int) -> None:
    """Refuse option values ``prepare`` cannot honour, before reading anything."""
    if split not in SPLIT_MODES:
        raise BadInputError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_MODES)}")
    if split == "given" and n_paths not in (2, 3):
        raise BadInputError(f"split='given' takes 2 files (train, test) or 3 (train, val, test), got {n_paths}")
    if int(min_count) < 1:
        raise BadInputError(f"min_count must be >= 1, got {min_count}")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise BadInputError(f"{name} must be in [0, 1), got {frac}")
    if split == "random" and val_fraction + test_fraction >= 1.0:
        raise BadInputError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    if int(chunk_rows) < 1:
        raise BadInputError(f"chunk_rows must be >= 1, got {chunk_rows}")


@dataclass
class _Layout:
    """The fields to encode and how: the format's fields, each one's plan, the user/item columns."""

    fmt: RawFormat
    specs: list[FieldSpec]
    plans: list[_FieldPlan]
    hash_buckets: dict[str, int]
    user_idx: int | None  # top-K: the user and item columns
    item_idx: int | None
    keep_user: bool  # top-K with identity users (not leave-last-out): every user keeps a training row

    @property
    def ctr(self) -> bool:
        return self.fmt.task == "ctr"

    @property
    def topk(self) -> bool:
        return self.fmt.task == "topk"


def _plan_layout(fmt: RawFormat, paths: list[Path], hash_buckets: Mapping[str, int] | None, split: str,
                 drop_duplicates: bool) -> _Layout:
    """Inspect the inputs' fields, pick each field's encoding (``--hash`` overrides), check the split fits."""
    specs = fmt.inspect(paths)
    names = [s.name for s in specs]
    buckets = {**fmt.default_hash_buckets(), **dict(hash_buckets or {})}
    for field_name, n in buckets.items():
        if field_name not in names:
            raise BadInputError(f"--hash names unknown field {field_name!r}; fields: {', '.join(names)}")
        if not 1 <= int(n) < 2**31 - 1:
            raise BadInputError(f"--hash {field_name}={n}: the number of buckets must be in [1, 2^31 - 2] (ids are int32)")
    plans = [_FieldPlan(s, "hash" if s.name in buckets else s.encoding, buckets.get(s.name)) for s in specs]
    topk = fmt.task == "topk"
    user_idx = next((j for j, s in enumerate(specs) if s.role == "user"), None) if topk else None
    item_idx = next((j for j, s in enumerate(specs) if s.role == "item"), None) if topk else None
    if split == "leave-last-out":
        if not topk or user_idx is None:
            raise BadInputError(f"--split leave-last-out needs top-K data (a user and an item field); format "
                                f"{fmt.name!r} gives {fmt.task} data: use --split random or given")
        if plans[user_idx].encoding == "hash":
            raise BadInputError(f"--split leave-last-out needs each user's own rows; the user field "
                                f"{plans[user_idx].name!r} is hashed (--hash): hashed users share buckets")
    if drop_duplicates and not topk:
        raise BadInputError("--drop-duplicates applies to top-K (user, item) data; CTR rows repeat by design "
                            "(impressions of the same features)")
    keep_user = topk and split != "leave-last-out" and plans[user_idx].encoding == "identity"  # type: ignore[index]
    return _Layout(fmt, specs, plans, buckets, user_idx, item_idx, keep_user)


@dataclass
class _Read:
    """What pass 1 leaves: the rows spilled per split and the counts decided so far."""

    spills: list[_RawSpill]
    rows: np.ndarray  # [3] rows per split (adjusted between the passes)
    positives: np.ndarray  # [3] CTR: positive labels per split
    maxu: np.ndarray  # keep_user: each user's largest split hash u (-1: none yet)
    id_max: np.ndarray  # top-K: the largest provisional id per field
    total: int  # input rows read


def _read_pass(layout: _Layout, paths: list[Path], splitter: _Splitter, tmp: Path, pool: ThreadPoolExecutor,
               chunk_rows: int, progress: ProgressFn | None) -> _Read:
    """Pass 1: read every chunk once, assign rows to splits, count the vocabularies, spill the rows."""
    n_fields = len(layout.plans)
    spills = [_RawSpill(tmp, name, n_fields, labels=layout.ctr, rowidx=layout.topk) for name in SPLITS]
    read = _Read(spills, np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.float64), np.full(0, -1.0),
                 np.full(n_fields, -1, dtype=np.int64), 0)
    try:
        for fi, path in enumerate(paths):
            file_rows = 0
            for chunk in layout.fmt.iter_chunks(path, chunk_rows):
                _read_chunk(layout, chunk, fi, splitter, pool, read)
                file_rows += len(chunk)
                if progress:
                    progress("read", read.total)
            if file_rows == 0:
                raise DataFormatError(f"{path} is empty (no data rows)")
    finally:
        for sp in spills:
            sp.close()
    return read


def _read_chunk(layout: _Layout, chunk: Chunk, file_index: int, splitter: _Splitter, pool: ThreadPoolExecutor,
                read: _Read) -> None:
    """One chunk of pass 1: split codes, provisional ids (fields in parallel), spill per split."""
    n, n_fields, plans = len(chunk), len(layout.plans), layout.plans
    _check_chunk(chunk, layout.specs)
    codes, u, eligible = splitter.assign(file_index, read.total, n)
    split_rows = np.bincount(codes, minlength=3)
    read.rows += split_rows
    if chunk.labels is not None:
        read.positives += np.bincount(codes, weights=chunk.labels, minlength=3)
    train = codes == _TRAIN
    ids = np.empty((n, n_fields), dtype=np.int32)

    def encode(j: int) -> None:
        ids[:, j] = plans[j].provisional(chunk.columns[j], train, chunk)

    list(pool.map(encode, range(n_fields)))
    rowidx = np.arange(read.total, read.total + n, dtype=np.int64) if layout.topk else None
    if layout.topk and n:
        np.maximum(read.id_max, ids.max(axis=0), out=read.id_max)
    if layout.keep_user and eligible:
        read.maxu = _track_max_u(read.maxu, ids[:, layout.user_idx].astype(np.int64) - 1, u)
    for s in range(3):
        if not split_rows[s]:
            continue
        mask = codes == s if split_rows[s] < n else slice(None)
        read.spills[s].write(ids[mask], chunk.labels[mask] if layout.ctr else None,  # type: ignore[index]
                             rowidx[mask] if rowidx is not None else None)
    read.total += n


@dataclass
class _LeftOut:
    """Top-K rows that leave their pass-1 split: dropped duplicates, leave-last-out's val/test rows."""

    duplicates: dict[str, Any] | None = None
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted global row indices
    held: dict[int, np.ndarray] = field(default_factory=lambda: {_VAL: np.zeros(0, dtype=np.int64),
                                                                 _TEST: np.zeros(0, dtype=np.int64)})
    llo_info: dict[str, int] | None = None


def _decide_left_out_rows(layout: _Layout, read: _Read, splitter: _Splitter, tmp: Path, *, split: str, seed: int,
                          drop_duplicates: bool, chunk_rows: int) -> _LeftOut:
    """Between the passes (top-K): duplicates, leave-last-out, each user's kept training row; fix the counts."""
    left = _LeftOut()
    rows, plans, user_idx = read.rows, layout.plans, layout.user_idx
    if layout.topk:
        n_dup, dropped_all, dropped_per_split = _duplicates(read.spills, tmp, user_idx, layout.item_idx,  # type: ignore[arg-type]
                                                            int(read.id_max[layout.item_idx]), chunk_rows)  # type: ignore[index]
        left.duplicates = {"rows": n_dup, "dropped": bool(drop_duplicates)}
        if drop_duplicates and n_dup:
            left.dropped = dropped_all
            rows -= dropped_per_split
        if split == "leave-last-out":
            left.held, left.llo_info = _leave_last_out(read.spills[_TRAIN], user_idx,  # type: ignore[arg-type]
                                                       int(read.id_max[user_idx]), left.dropped, chunk_rows)  # type: ignore[index]
            rows[_VAL], rows[_TEST] = len(left.held[_VAL]), len(left.held[_TEST])
            rows[_TRAIN] -= rows[_VAL] + rows[_TEST]
        elif layout.keep_user and len(left.dropped):  # the max-u row of a user must be one that stays
            read.maxu = _max_u_without(read.spills, splitter, seed, user_idx, left.dropped, chunk_rows)  # type: ignore[arg-type]
        left_out = np.union1d(np.union1d(left.held[_VAL], left.held[_TEST]), left.dropped)
        if len(left_out) and any(p.encoding == "vocab" for p in plans):
            _uncount(plans, read.spills[_TRAIN], left_out, chunk_rows)  # vocabularies count train rows only
    if layout.keep_user:  # each user's max-u row moves to train; fix the planned counts
        seen_u = read.maxu[read.maxu >= 0]
        moved = np.bincount(splitter.code_of_u(seen_u, 0), minlength=3)
        rows[_TRAIN] += moved[_VAL] + moved[_TEST]
        rows[_VAL] -= moved[_VAL]
        rows[_TEST] -= moved[_TEST]
    return left


def _warnings(layout: _Layout, read: _Read, left: _LeftOut, paths: list[Path], min_count: int,
              drop_duplicates: bool) -> list[str]:
    """One line per doubtful outcome: empty or single-class splits, fields ``min_count`` empties, duplicates."""
    warnings = _check_splits(read.rows, read.positives if layout.ctr else None, paths)
    warnings += _check_min_count(layout.plans, min_count)
    duplicates = left.duplicates
    if duplicates and duplicates["rows"] and not drop_duplicates:
        warnings.append(f"{duplicates['rows']:,} rows ({duplicates['rows'] / max(int(read.total), 1):.1%}) repeat an "
                        "earlier (user, item) pair; a test pair also seen in training can never be recommended "
                        "(seen items are excluded): --drop-duplicates keeps only the first")
    return warnings


def _write_pass(layout: _Layout, read: _Read, left: _LeftOut, splitter: _Splitter, tmp: Path,
                pool: ThreadPoolExecutor, *, split: str, seed: int, chunk_rows: int,
                progress: ProgressFn | None) -> np.ndarray:
    """Pass 2: map the spilled rows to final ids into each split's ``.npy`` files; OOV counts ``[3, F]``."""
    n_fields = len(layout.plans)
    oov = np.zeros((3, n_fields), dtype=np.int64)
    writers: list[tuple[_NpyWriter, _NpyWriter | None]] = []
    for s, name in enumerate(SPLITS):
        (tmp / name).mkdir()
        writers.append((
            _NpyWriter(tmp / name / "ids.npy", (int(read.rows[s]), n_fields), np.int32),
            _NpyWriter(tmp / name / "labels.npy", (int(read.rows[s]),), np.float32) if layout.ctr else None,
        ))
    try:
        done = 0
        for s in range(3):
            for ids, labels, rowidx in read.spills[s].read(chunk_rows):
                dest = _destinations(layout, read, left, splitter, s, ids, rowidx, split=split, seed=seed)

                def remap(j: int, ids: np.ndarray = ids) -> None:
                    ids[:, j] = layout.plans[j].final(ids[:, j])

                list(pool.map(remap, range(n_fields)))
                for d in range(3):
                    mask = dest == d
                    if not mask.any():
                        continue
                    part = ids[mask] if not mask.all() else ids
                    oov[d] += (part == 0).sum(axis=0)
                    writers[d][0].write(part)
                    if layout.ctr:
                        writers[d][1].write(labels[mask])  # type: ignore[index, union-attr]
                done += len(ids)
                if progress:
                    progress("write", done)
            read.spills[s].remove()
    finally:
        for ids_w, lab_w in writers:
            ids_w.fh.close()
            if lab_w is not None:
                lab_w.fh.close()
    for ids_w, lab_w in writers:
        ids_w.close()
        if lab_w is not None:
            lab_w.close()
    return oov


def _destinations(layout: _Layout, read: _Read, left: _LeftOut, splitter: _Splitter, s: int, ids: np.ndarray,
                  rowidx: np.ndarray | None, *, split: str, seed: int) -> np.ndarray:
    """The final split of each spilled row of split ``s`` (``-1``: a dropped duplicate)."""
    dest = np.full(len(ids), s, dtype=np.int8)
    if rowidx is None:
        return dest
    if split == "leave-last-out":
        dest[_in_sorted(rowidx, left.held[_VAL])] = _VAL
        dest[_in_sorted(rowidx, left.held[_TEST])] = _TEST
    elif layout.keep_user and splitter.eligible(s) and s != _TRAIN:
        u = split_uniform(seed, rowidx.astype(np.uint64))
        dest[u == read.maxu[ids[:, layout.user_idx].astype(np.int64) - 1]] = _TRAIN
    if len(left.dropped):
        dest[_in_sorted(rowidx, left.dropped)] = -1
    return dest


def _write_schema(layout: _Layout, tmp: Path) -> dict[str, Any]:
    """``schema.json`` from the finalised plans; returns its content (with the fingerprint)."""
    fmt = layout.fmt
    schema = Schema(task=fmt.task, fields=[p.to_field() for p in layout.plans], label="label" if layout.ctr else "",
                    source_format=fmt.name, extra=fmt.schema_extra())
    schema_dict = _schema_dict(schema)
    atomic_write_json(tmp / "schema.json", schema_dict)
    return schema_dict


def _split_info(split: str, seed: int, val_fraction: float, test_fraction: float, paths: list[Path]) -> dict[str, Any]:
    """``prepare.json``'s ``split``: the mode, seed, fractions and (given) the file of each split."""
    return {"mode": split, "seed": seed,
            "val_fraction": val_fraction if split != "leave-last-out" else None,
            "test_fraction": test_fraction if split != "leave-last-out" else None,
            "files": ({s: str(p) for s, p in zip(("train", "test") if len(paths) == 2 else SPLITS, paths, strict=True)}
                      if split == "given" else None)}


def _counts_info(layout: _Layout, read: _Read, oov: np.ndarray) -> dict[str, Any]:
    """``prepare.json``'s rows, fields, encodings, vocabulary sizes, OOV and positive rates."""
    rows, plans = read.rows, layout.plans
    return {
        "rows": {name: int(rows[s]) for s, name in enumerate(SPLITS)},
        "total_rows": int(rows.sum()),
        "fields": [s.name for s in layout.specs],
        "encoding": {p.name: p.encoding for p in plans},
        "vocab_size": {p.name: p.vocab_size for p in plans},
        "distinct_train_values": {p.name: (p.distinct if p.encoding == "vocab" else None) for p in plans},
        "oov_rate": {
            name: {p.name: (float(oov[s, j] / rows[s]) if rows[s] else 0.0) for j, p in enumerate(plans)}
            for s, name in enumerate(SPLITS)
        },
        "positive_rate": (
            {name: (float(read.positives[s] / rows[s]) if rows[s] else None) for s, name in enumerate(SPLITS)}
            if layout.ctr else None
        ),
    }


def _schema_dict(schema: Schema) -> dict[str, Any]:
    """``schema.to_dict()`` without deep-copying large vocabularies (``dataclasses.asdict``
    copies every value; with 10^5..10^6 values that costs seconds)."""
    fingerprint = schema.fingerprint()
    values = [f.values for f in schema.fields]
    try:
        for f in schema.fields:
            f.values = None
        d = schema.to_dict()
    finally:
        for f, v in zip(schema.fields, values, strict=True):
            f.values = v
    d["fingerprint"] = fingerprint
    for fd, v in zip(d["fields"], values, strict=True):
        if v is not None:
            fd["values"] = v
    return d


# --------------------------------------------------------------------------- top-K helpers
def _in_sorted(x: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_values)`` for a sorted array (binary search, no temporary set)."""
    if not len(sorted_values):
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return sorted_values[pos] == x


def _track_max_u(maxu: np.ndarray, users: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``maxu[user] = max(maxu[user], u)`` over a chunk, growing ``maxu`` as new users appear."""
    if users.size and users.max() >= maxu.size:
        grown = np.full(max(int(users.max()) + 1, 2 * maxu.size), -1.0)
        grown[: maxu.size] = maxu
        maxu = grown
    np.maximum.at(maxu, users, u)
    return maxu


def _max_u_without(spills: Sequence[_RawSpill], splitter: _Splitter, seed: int, user_idx: int,
                   dropped: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Each user's largest ``u`` over the rows that stay (after dropping duplicates)."""
    maxu = np.full(0, -1.0)
    for s, spill in enumerate(spills):
        if not splitter.eligible(s):
            continue
        for ids, _, rowidx in spill.read(chunk_rows):
            keep = ~_in_sorted(rowidx, dropped)  # type: ignore[arg-type]
            u = split_uniform(seed, rowidx[keep].astype(np.uint64))  # type: ignore[index]
            maxu = _track_max_u(maxu, ids[keep, user_idx].astype(np.int64) - 1, u)
    return maxu


def _duplicates(spills: Sequence[_RawSpill], tmp: Path, user_idx: int, item_idx: int, item_max: int,
                chunk_rows: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Rows repeating an earlier ``(user, item)`` pair (provisional ids) over all spills.

    Returns ``(count, their global row indices sorted, count per split)``; the first occurrence
    (smallest row index) of a pair is never counted. Pairs are partitioned by key into buckets of
    at most :data:`DUP_BUCKET_ROWS` rows on disk, each deduplicated in memory.
    """
    total = sum(sp.rows for sp in spills)
    n_buckets = max(1, -(-total // DUP_BUCKET_ROWS))
    paths = [tmp / f".dup{b}.tmp" for b in range(n_buckets)]
    files = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    rec = np.dtype([("key", np.int64), ("row", np.int64), ("split", np.int8)])
    try:
        for s, spill in enumerate(spills):
            for ids, _, rowidx in spill.read(chunk_rows):
                out = np.empty(len(ids), dtype=rec)
                out["key"] = ids[:, user_idx].astype(np.int64) * (item_max + 1) + ids[:, item_idx]
                out["row"], out["split"] = rowidx, s
                which = out["key"] % n_buckets
                for b in range(n_buckets):
                    files[b].write(out[which == b].tobytes() if n_buckets > 1 else out.tobytes())
    finally:
        for fh in files:
            fh.close()
    found: list[np.ndarray] = []
    per_split = np.zeros(3, dtype=np.int64)
    for path in paths:
        part = np.fromfile(path, dtype=rec)
        path.unlink()
        order = np.lexsort((part["row"], part["key"]))
        part = part[order]
        repeat = np.flatnonzero(part["key"][1:] == part["key"][:-1]) + 1
        found.append(part["row"][repeat])
        per_split += np.bincount(part["split"][repeat], minlength=3)
    rows = np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return len(rows), rows, per_split


def _leave_last_out(spill: _RawSpill, user_idx: int, user_max: int, dropped: np.ndarray,
                    chunk_rows: int) -> tuple[dict[int, np.ndarray], dict[str, int]]:
    """Each user's last row (file order) -> test, second-last -> val, for users with at least
    :data:`LLO_MIN_INTERACTIONS` rows (SASRec ``data_partition``). Returns the sorted global row
    indices per held-out split and counts of users."""
    size = max(user_max + 1, 1)
    count = np.zeros(size, dtype=np.int64)
    last = np.full(size, -1, dtype=np.int64)
    second = np.full(size, -1, dtype=np.int64)
    for ids, _, rowidx in spill.read(chunk_rows):
        keep = ~_in_sorted(rowidx, dropped)  # type: ignore[arg-type]
        users, rows = ids[keep, user_idx].astype(np.int64), rowidx[keep]  # type: ignore[index]
        if not users.size:
            continue
        count += np.bincount(users, minlength=size)
        seen, rev = np.unique(users[::-1], return_index=True)
        last_pos = users.size - 1 - rev  # each user's last row in this chunk
        rest = np.ones(users.size, dtype=bool)
        rest[last_pos] = False
        users2, rows2 = users[rest], rows[rest]
        seen2, rev2 = np.unique(users2[::-1], return_index=True)  # users with >= 2 rows in this chunk
        once = seen[~np.isin(seen, seen2)]
        second[once] = last[once]
        second[seen2] = rows2[users2.size - 1 - rev2]
        last[seen] = rows[last_pos]
    enough = count >= LLO_MIN_INTERACTIONS
    held = {_VAL: np.sort(second[enough]), _TEST: np.sort(last[enough])}
    info = {"users": int(np.count_nonzero(count)), "held_out_users": int(np.count_nonzero(enough)),
            "train_only_users": int(np.count_nonzero((count > 0) & ~enough)),
            "min_interactions": LLO_MIN_INTERACTIONS}
    return held, info


def _uncount(plans: Sequence[_FieldPlan], spill: _RawSpill, rows_out: np.ndarray, chunk_rows: int) -> None:
    """Remove the given training-spill rows from the vocabulary counts (held out or dropped)."""
    for ids, _, rowidx in spill.read(chunk_rows):
        out = _in_sorted(rowidx, rows_out)  # type: ignore[arg-type]
        if not out.any():
            continue
        for j, plan in enumerate(plans):
            if plan.encoding == "vocab":
                plan.counts -= np.bincount(ids[out, j], minlength=plan.counts.size)[: plan.counts.size]


#: A vocabulary field whose training rows fall to OOV at least this often gets a warning line.
OOV_WARN_RATE = 0.95


def _check_min_count(plans: Sequence[_FieldPlan], min_count: int) -> list[str]:
    """Warnings for vocabulary fields that ``min_count`` turns (almost) entirely into OOV id 0.

    Such a field carries no signal (every row looks up the same OOV row); when it is
    *every* field, the model can only learn the base rate (AUC 0.5), so that is an error.
    """
    warnings: list[str] = []
    vocab = [p for p in plans if p.encoding == "vocab" and p.train_rows]
    for p in vocab:
        rate = p.train_oov / p.train_rows
        if rate >= OOV_WARN_RATE:
            kept = p.vocab_size - 1
            warnings.append(f"field {p.name!r}: --min-count {min_count} maps {rate:.1%} of its training rows to the "
                            f"OOV id (keeps {kept:,} of {p.distinct:,} distinct values; the most frequent occurs "
                            f"{p.max_count:,} times); this field will carry almost no signal")
    if vocab and len(vocab) == len(plans) and all(p.train_oov == p.train_rows for p in vocab):
        top = max(p.max_count for p in vocab)
        raise BadInputError(f"--min-count {min_count} maps every value of every field to the OOV id (no value occurs "
                            f"{min_count} times in the training split; the most frequent occurs {top:,} times): "
                            f"a model could only learn the base rate; use --min-count {top} or less")
    return warnings


def _check_splits(rows: np.ndarray, positives: np.ndarray | None, paths: Sequence[Path]) -> list[str]:
    """Refuse data nothing can be learned from; warn about splits train or evaluation cannot use.

    An empty training split, or (CTR) training labels of one class only, is an error: AUC is
    undefined and every model predicts the base rate. An empty val split (``train`` refuses it:
    early stopping and the checkpoint choice need it), an empty test split, and a single-class
    val/test split (AUC undefined there) are warnings.
    """
    inputs = ", ".join(str(p) for p in paths)
    if rows[_TRAIN] == 0:
        raise BadInputError(f"the training split of {inputs} is empty (val {int(rows[_VAL]):,}, test "
                            f"{int(rows[_TEST]):,} rows); give more rows or smaller --val-fraction/--test-fraction")
    if positives is not None:
        pos = int(positives[_TRAIN])
        if pos in (0, int(rows[_TRAIN])):
            raise BadInputError(f"every training label of {inputs} is {1 if pos else 0} ({int(rows[_TRAIN]):,} rows): "
                                "a CTR model needs clicks and non-clicks (AUC is undefined); check the label column "
                                "and the label rule (e.g. --option threshold for movielens)")
    warnings: list[str] = []
    for s, name in ((_VAL, "val"), (_TEST, "test")):
        if rows[s] == 0:
            use = ("`ondevice train` refuses it (early stopping and the checkpoint choice need validation rows); "
                   "use --val-fraction > 0" if s == _VAL else "there will be no test metrics; use --test-fraction > 0")
            warnings.append(f"the {name} split is empty: {use}")
        elif positives is not None and int(positives[s]) in (0, int(rows[s])):
            warnings.append(f"every {name} label is {1 if positives[s] else 0} ({int(rows[s]):,} rows): AUC is undefined "
                            f"on {name}" + ("; `ondevice train` refuses it" if s == _VAL else ""))
    return warnings


def _check_chunk(chunk: Chunk, specs: list[FieldSpec]) -> None:
    if len(chunk.columns) != len(specs):  # a format bug, not a user error
        raise RuntimeError(f"internal error: chunk has {len(chunk.columns)} columns, format declares {len(specs)} fields")
