"""Implicit-feedback interaction lists for top-K recommendation.

Two layouts, detected per line (whitespace-separated integers):

* LightGCN/NGCF/UltraGCN style: ``user item item ...`` — one line per user, all of the
  user's items (``train.txt`` / ``test.txt``). A line with only a user id has no items.
* SASRec style: ``user item`` — one interaction per line (the same rule, one item).

Both give one ``(user, item)`` row per interaction. Ids are 0-based in LightGCN files, so
both fields use **identity** encoding: ``id = raw + 1`` (id 0 stays the OOV row), and the
vocabulary size is the largest id in any input file + 2. (1-based files such as SASRec's
simply leave row 1 unused.)

Use ``split="given"`` with the train and test files; val is then a seeded random
``val_fraction`` of each user's train interactions, keeping at least one in train
(see ``ondevice.data.preparation``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ondevice.data.formats.base import (
    DEFAULT_BLOCK_BYTES,
    Chunk,
    FieldSpec,
    RawFormat,
    line_too_long,
    open_binary,
)
from ondevice.errors import DataFormatError


class ImplicitFormat(RawFormat):
    name = "implicit"
    task = "topk"
    options = {"block_bytes": "bytes of text parsed at a time (default 8 MiB); a longer line is refused"}
    label_rule = "implicit: every listed (user, item) pair is a positive"

    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        return [FieldSpec("user", encoding="identity", role="user"), FieldSpec("item", encoding="identity", role="item")]

    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        block_bytes = max(int(self.opts.get("block_bytes", DEFAULT_BLOCK_BYTES)), 1 << 16)
        line_no = 1
        with open_binary(path) as fh:
            rest = b""
            while True:
                data = fh.read(block_bytes)
                buf = rest + data
                if not data:
                    block, rest = buf, b""
                else:
                    cut = buf.rfind(b"\n")
                    if (buf.find(b"\n") if cut >= 0 else len(buf)) > block_bytes:  # memory stays bounded by the block size
                        raise line_too_long(path, line_no, block_bytes)
                    if cut < 0:
                        rest = buf
                        continue
                    block, rest = buf[: cut + 1], buf[cut + 1 :]
                if block.strip():
                    users, items, lines = _parse_block(block, path, line_no)
                    for start in range(0, len(users), chunk_rows):
                        sl = slice(start, start + chunk_rows)
                        line_of = lines[sl]
                        yield Chunk([users[sl], items[sl]], None, lambda i, line_of=line_of: f"{path} line {int(line_of[i])}")
                line_no += block.count(b"\n")
                if not data:
                    return


def _parse_block(block: bytes, path: Path, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised parse of whole lines: (user per interaction, item, physical line number)."""
    b = np.frombuffer(block, dtype=np.uint8)
    is_tok = (b != 32) & (b != 9) & (b != 10) & (b != 13)
    starts = np.flatnonzero(is_tok & ~np.concatenate([[False], is_tok[:-1]]))
    newlines = np.flatnonzero(b == 10)
    line_idx = np.searchsorted(newlines, starts)  # 0-based line of each token within the block
    try:
        values = np.array(block.split(), dtype=np.bytes_).astype(np.int64)
    except (ValueError, OverflowError):
        _raise_bad_token(block, path, first_line)
    if values.size != starts.size:  # a token with other whitespace (\v, \f): fall back to a clear error
        _raise_bad_token(block, path, first_line)
    if values.size and values.max() >= 2**31 - 2:
        k = int(np.flatnonzero(values >= 2**31 - 2)[0])
        raise DataFormatError(f"{path} line {first_line + int(line_idx[k])}: id {int(values[k])} is too large "
                              "(ids are stored as int32, at most 2^31 - 3); renumber the ids")
    if values.size and values.min() < 0:
        k = int(np.flatnonzero(values < 0)[0])
        raise DataFormatError(f"{path} line {first_line + int(line_idx[k])}: negative id {int(values[k])}; ids must be >= 0")
    first = np.ones(values.size, dtype=bool)
    first[1:] = line_idx[1:] != line_idx[:-1]
    _refuse_label_column(values, first, path, first_line)
    owner = np.maximum.accumulate(np.where(first, np.arange(values.size), 0))  # index of the line's user token
    items = ~first
    return values[owner[items]], values[items], first_line + line_idx[items]


#: Lines of a block that must all look like ``user item 0|1`` before the file is refused.
LABEL_COLUMN_MIN_LINES = 10


def _refuse_label_column(values: np.ndarray, first: np.ndarray, path: Path, first_line: int) -> None:
    """Refuse ``user item label`` files: read as ``user item item`` they double the rows and turn
    every negative (label 0) into a positive interaction with item 0 (issue 13).

    The signature: every line has exactly three tokens and the third is always 0 or 1, over at
    least :data:`LABEL_COLUMN_MIN_LINES` lines (a real interaction list varies in length).
    """
    starts = np.flatnonzero(first)
    if len(starts) < LABEL_COLUMN_MIN_LINES:
        return
    lengths = np.diff(np.append(starts, values.size))
    if not (lengths == 3).all():
        return
    third = values[starts + 2]
    if ((third == 0) | (third == 1)).all():
        raise DataFormatError(
            f"{path} line {first_line}: every line is 'user item 0|1' ({len(starts):,} lines): the third column is a "
            "label, not an item; --format implicit reads 'user item item ...' lists and would count every row twice "
            "and label-0 rows as positives. Keep the positive pairs without the label (awk '$3==1{print $1, $2}') "
            "or prepare the file as labelled CTR data (--format csv)")


def _raise_bad_token(block: bytes, path: Path, first_line: int) -> None:
    for k, line in enumerate(block.split(b"\n")):
        for tok in line.split():
            if not tok.isdigit():
                bad = tok.decode(errors="replace")
                raise DataFormatError(f"{path} line {first_line + k}: {bad!r} is not an integer id (ids must be >= 0)")
            if int(tok) >= 2**31 - 2:
                raise DataFormatError(f"{path} line {first_line + k}: id {tok.decode()[:30]} is too large "
                                      "(ids are stored as int32, at most 2^31 - 3); renumber the ids")
    raise DataFormatError(f"{path} near line {first_line}: unexpected characters; expected 'user item item ...' lines")
