"""MovieLens-1M ``::`` files as a CTR task.

Input: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``; ``.gz`` or a head such as
``ratings_head10k.dat.gz`` works too). ``users.dat`` (``UserID::Gender::Age::Occupation::Zip``)
and ``movies.dat`` (``MovieID::Title::Genres``, **latin-1**) are read from the same folder
(``users.dat[.gz]``, ``movies.dat[.gz]``) unless the ``users``/``movies`` options name them.
They are small lookup tables joined to each rating in memory.

Label: ``rating >= threshold`` (default 4, i.e. 4 and 5 stars are positives, the usual
explicit-to-CTR conversion in e.g. AutoInt/FuxiCTR MovieLens setups). Option
``drop_ratings`` (e.g. ``3``, or ``[3]``) drops neutral ratings first, as PEP does.

Fields (vocabulary encoding): ``user`` (role user), ``item`` (role item), ``gender``,
``age``, ``occupation``, ``zip``, ``genre`` (the first listed genre), ``year`` (release
year from the title's ``(YYYY)``). A rating whose user or movie is missing from the side
tables gets the missing value ``""`` in those fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ondevice.data.formats.base import (
    DEFAULT_BLOCK_BYTES,
    Chunk,
    DelimitedSource,
    FieldSpec,
    RawFormat,
    open_binary,
    to_float,
)
from ondevice.errors import BadInputError, DataFormatError

USER_COLS = ("gender", "age", "occupation", "zip")
MOVIE_COLS = ("genre", "year")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _side_file(folder: Path, stem: str, explicit: str | None) -> Path:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise BadInputError(f"movielens {stem} file not found: {p}")
        return p
    for name in (f"{stem}.dat", f"{stem}.dat.gz"):
        if (folder / name).is_file():
            return folder / name
    raise BadInputError(f"movielens needs {stem}.dat next to the ratings file in {folder}; or pass --option {stem}=PATH")


def _read_table(path: Path, n_fields: int, encoding: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    with open_binary(path) as fh:
        for k, raw in enumerate(fh, start=1):
            line = raw.decode(encoding).rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("::")
            if len(parts) != n_fields:
                raise DataFormatError(f"{path} line {k}: {len(parts)} fields, expected {n_fields}")
            try:
                out[int(parts[0])] = parts[1:]
            except ValueError:
                raise DataFormatError(f"{path} line {k}: id {parts[0]!r} is not an integer") from None
    if not out:
        raise DataFormatError(f"{path} is empty (no data rows)")
    return out


def _lookup(table: dict[int, list[str]], width: int) -> list[pa.Array]:
    """Columns indexed by id; the last slot (index max_id + 1) is the missing row (null)."""
    size = max(table) + 2
    cols = [[None] * size for _ in range(width)]
    for key, vals in table.items():
        for c in range(width):
            cols[c][key] = vals[c]
    return [pa.array(c, type=pa.string()) for c in cols]


class MovieLensFormat(RawFormat):
    name = "movielens"
    task = "ctr"
    options = {
        "threshold": "rating >= threshold is a positive (default 4)",
        "drop_ratings": "ratings to drop before labelling, e.g. 3 (PEP drops neutral ratings)",
        "users": "path of users.dat (default: beside the ratings file)",
        "movies": "path of movies.dat (default: beside the ratings file)",
        "block_bytes": "bytes of text parsed at a time (default 8 MiB)",
    }

    @property
    def label_rule(self) -> str:  # type: ignore[override]
        return f"rating >= {self.threshold}; dropped ratings: {self.drop}"

    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        self.threshold = float(self.opts.get("threshold", 4))
        drop = self.opts.get("drop_ratings", [])
        if isinstance(drop, (int, float, str)):
            drop = [d for d in str(drop).replace(";", ",").split(",") if d.strip()]
        try:
            self.drop = sorted(float(d) for d in drop)
        except ValueError:
            raise BadInputError(f"movielens option drop_ratings={drop!r}: expected numbers such as 3") from None
        side = [p.name for p in inputs if p.name.split(".")[0] in ("users", "movies")]
        if side:
            raise BadInputError(f"movielens takes only the ratings file(s); {', '.join(side)} {'are' if len(side) > 1 else 'is'} read from beside "
                                "the ratings file (or --option users=PATH / movies=PATH): drop it from the inputs")
        folder = inputs[0].parent
        users = _read_table(_side_file(folder, "users", self.opts.get("users")), 5, "latin-1")
        movies_raw = _read_table(_side_file(folder, "movies", self.opts.get("movies")), 3, "latin-1")
        movies = {}
        for mid, (title, genres) in movies_raw.items():
            m = _YEAR.search(title)
            movies[mid] = [genres.split("|")[0], m.group(1) if m else ""]
        self.user_cols = _lookup(users, 4)
        self.movie_cols = _lookup(movies, 2)
        return [FieldSpec("user", role="user"), FieldSpec("item", role="item")] + [FieldSpec(c) for c in USER_COLS + MOVIE_COLS]

    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        names = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
        src = DelimitedSource(path, names=names, delimiter=":", logical_delimiter="::", expected_fields=4,
                              block_bytes=self.opts.get("block_bytes", DEFAULT_BLOCK_BYTES))
        for block in src.blocks(chunk_rows):
            uid = _ids(to_float(block.column("user"), block, "user id"), block, "user id")
            mid = _ids(to_float(block.column("item"), block, "movie id"), block, "movie id")
            rating = to_float(block.column("rating"), block, "rating").to_numpy(zero_copy_only=False)
            if np.isnan(rating).any():
                raise DataFormatError(f"{block.locate(int(np.flatnonzero(np.isnan(rating))[0]))}: rating is empty")
            keep = ~np.isin(rating, self.drop) if self.drop else np.ones(len(rating), dtype=bool)
            idx = np.flatnonzero(keep)
            uid, mid, rating = uid[idx], mid[idx], rating[idx]
            u_slot = np.where((uid >= 0) & (uid < len(self.user_cols[0]) - 1), uid, len(self.user_cols[0]) - 1)
            m_slot = np.where((mid >= 0) & (mid < len(self.movie_cols[0]) - 1), mid, len(self.movie_cols[0]) - 1)
            cols: list[pa.Array] = [pa.array(uid), pa.array(mid)]
            cols += [c.take(pa.array(u_slot)) for c in self.user_cols]
            cols += [c.take(pa.array(m_slot)) for c in self.movie_cols]
            labels = (rating >= self.threshold).astype(np.float32)
            yield Chunk(cols, labels, lambda i, block=block, idx=idx: block.locate(int(idx[i])))


def _ids(x: pa.Array, block, what: str) -> np.ndarray:
    v = x.to_numpy(zero_copy_only=False)
    if np.isnan(v).any():
        raise DataFormatError(f"{block.locate(int(np.flatnonzero(np.isnan(v))[0]))}: {what} is empty")
    return v.astype(np.int64)
