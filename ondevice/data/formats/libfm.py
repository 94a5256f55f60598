"""libFM / SVMlight text: ``label idx:val idx:val ...`` per line (space-separated).

Field rule (documented, and what NFM/AFM-style CTR code assumes for Frappe and MovieLens-tag):
every line has the **same number F of features**, and field ``f`` is the ``f``-th
``idx:val`` pair of the line. Frappe's NFM files (10 one-hot features: user, item,
daytime, weekday, isweekend, homework, cost, weather, country, city) therefore give 10
fields. F is taken from the first line (or the ``fields`` option); a line with a different
count is an error naming the file and line.

A feature's raw value is its index ``idx`` when ``val`` is 1 (one-hot), otherwise the
pair ``idx:val`` (so a real-valued feature is categorical per distinct value). Labels:
``> 0`` is positive, so both ``1/-1`` and ``1/0`` labelling work.

Options: ``fields`` (F), ``names`` (comma-separated field names, default ``f1..fF``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow.compute as pc

from ondevice.data.formats.base import (
    DEFAULT_BLOCK_BYTES,
    Chunk,
    DelimitedSource,
    FieldSpec,
    RawFormat,
    labels_from,
    read_first_line,
)
from ondevice.errors import BadInputError, DataFormatError

FRAPPE_NAMES = "user,item,daytime,weekday,isweekend,homework,cost,weather,country,city"


class LibFMFormat(RawFormat):
    name = "libfm"
    task = "ctr"
    options = {
        "fields": "features per line (default: counted on the first line)",
        "names": f"comma-separated field names (Frappe: {FRAPPE_NAMES})",
        "block_bytes": "bytes of text parsed at a time (default 8 MiB)",
    }
    label_rule = "label > 0 is positive (1/-1 and 1/0 labels)"

    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        n = self.opts.get("fields")
        if n is None:
            first = read_first_line(inputs[0])
            if first is None:
                raise DataFormatError(f"{inputs[0]} is empty (no data rows)")
            n = len(first.split(" ")) - 1
        n = int(n)
        if n < 1:
            raise DataFormatError(f"{inputs[0]} line 1: no idx:val features after the label")
        names = self.opts.get("names")
        if names is None:
            self.names = [f"f{i + 1}" for i in range(n)]
        else:
            self.names = [s.strip() for s in (names.split(",") if isinstance(names, str) else names)]
            if len(self.names) != n:
                raise BadInputError(f"libfm option names has {len(self.names)} names but lines have {n} features")
        return [FieldSpec(name) for name in self.names]

    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        cols = ["__label", *[f"__f{i}" for i in range(len(self.names))]]
        src = DelimitedSource(path, names=cols, delimiter=" ", block_bytes=self.opts.get("block_bytes", DEFAULT_BLOCK_BYTES))
        for block in src.blocks(chunk_rows):
            labels = labels_from(block.column("__label"), block)
            values = [pc.replace_substring_regex(block.column(c), pattern=r":1(\.0*)?$", replacement="") for c in cols[1:]]
            yield Chunk(values, labels, block.locate)
