"""Avazu CTR CSV (Kaggle "Click-Through Rate Prediction", 2014).

Format: comma-separated with a header line ``id,click,hour,C1,banner_pos,site_id,...``.
``click`` (0/1) is the label and ``id`` (a row id) is dropped. ``hour`` is ``YYMMDDHH``;
as in the common Avazu preprocessing (e.g. FuxiCTR's ``convert_hour``/``convert_weekday``)
it becomes two fields, ``hour`` (hour of day, ``00``..``23``) and ``weekday`` (0 = Monday),
because the raw timestamp never repeats between a random train and test split. Every other
column is a categorical field (vocabulary encoding), in file order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ondevice.data.formats.base import (
    DEFAULT_BLOCK_BYTES,
    Block,
    Chunk,
    DelimitedSource,
    FieldSpec,
    RawFormat,
    labels_from,
)
from ondevice.errors import DataFormatError

LABEL, DROP, HOUR = "click", "id", "hour"


class AvazuFormat(RawFormat):
    name = "avazu"
    task = "ctr"
    options = {"block_bytes": "bytes of text parsed at a time (default 8 MiB)"}
    label_rule = "click > 0 is a click; hour YYMMDDHH -> hour of day + weekday"

    def _source(self, path: Path) -> DelimitedSource:
        return DelimitedSource(path, names=None, delimiter=",", header=True, quoting=True,
                               block_bytes=self.opts.get("block_bytes", DEFAULT_BLOCK_BYTES))

    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        header = None
        for path in inputs:
            names = self._source(path).names
            if LABEL not in names:
                raise DataFormatError(f"{path} line 1: no {LABEL!r} column in the header; Avazu files need id,click,hour,...")
            if header is not None and names != header:
                raise DataFormatError(f"{path} line 1: header differs from {inputs[0]}'s")
            header = names
        assert header is not None
        self.columns = header
        fields: list[FieldSpec] = []
        for c in header:
            if c in (LABEL, DROP):
                continue
            if c == HOUR:
                fields += [FieldSpec("hour", transform="avazu_hour_of_day"), FieldSpec("weekday", transform="avazu_weekday")]
            else:
                fields.append(FieldSpec(c))
        return fields

    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        for block in self._source(path).blocks(chunk_rows):
            labels = labels_from(block.column(LABEL), block, LABEL)
            cols: list[pa.Array] = []
            for c in self.columns:
                if c in (LABEL, DROP):
                    continue
                if c == HOUR:
                    cols += _hour_fields(block.column(c), block)
                else:
                    cols.append(block.column(c))
            yield Chunk(cols, labels, block.locate)


def _hour_fields(col: pa.Array, block: Block) -> list[pa.Array]:
    try:
        ts = pc.strptime(col, format="%y%m%d%H", unit="s")
        if ts.null_count:
            raise pa.ArrowInvalid("null")
    except pa.ArrowInvalid:
        values = col.to_pylist()
        bad = next(i for i, v in enumerate(values) if not (len(v) == 8 and v.isdigit()) or _bad_date(v))
        raise DataFormatError(f"{block.locate(bad)}: hour {values[bad]!r} is not YYMMDDHH") from None
    return [pc.hour(ts), pc.day_of_week(ts)]


def _bad_date(v: str) -> bool:
    import datetime

    try:
        datetime.datetime.strptime(v, "%y%m%d%H")
    except ValueError:
        return True
    return False
