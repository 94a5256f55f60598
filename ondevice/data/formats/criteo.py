"""Criteo Kaggle Display Advertising Challenge (DAC) TSV.

Format: no header, tab-separated, 40 columns per line: ``label`` (0/1), ``I1..I13``
(integer counts, may be negative or empty), ``C1..C26`` (8-hex-digit hashed categoricals,
may be empty). See ``../shared/data/README.md`` and the Kaggle DAC description.

All 39 columns become categorical fields (vocabulary encoding):

* ``I1..I13``: ``x > 2 -> floor(ln(x)^2)``, otherwise ``x`` itself (``-1``, ``0``, ``1``,
  ``2`` keep their value) — the convention of the Kaggle winners' solution used by the PEP
  (Liu et al., ICLR 2021) and DeepLight (Deng et al., WSDM 2021) preprocessing code. A
  missing value (an empty cell, or ``NA``/``NULL``/``nan``) is a value of its own (stored as
  ``""`` in the vocabulary). A value that is not a finite number (``inf``, ``1e999``) or has no
  64-bit integer token (``-9.3e18``, which the rule keeps as itself) is refused with its file
  and line, like any other non-number: these are counts, and such a value means a damaged
  file (they used to share one token silently).
* ``C1..C26``: the hex string; a missing value (``""``) is a value of its own.

The label must be a number; ``> 0`` is a click.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from ondevice.data.formats.base import (
    DEFAULT_BLOCK_BYTES,
    Chunk,
    DelimitedSource,
    FieldSpec,
    RawFormat,
    criteo_log2,
    labels_from,
    to_float,
)

INT_COLUMNS = [f"I{i}" for i in range(1, 14)]
CAT_COLUMNS = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *INT_COLUMNS, *CAT_COLUMNS]


class CriteoFormat(RawFormat):
    name = "criteo"
    task = "ctr"
    options = {"block_bytes": "bytes of text parsed at a time (default 8 MiB)"}
    label_rule = "label column > 0 is a click"

    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        return [FieldSpec(c, transform="criteo_log2") for c in INT_COLUMNS] + [FieldSpec(c) for c in CAT_COLUMNS]

    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        numeric = {c: pa.float64() for c in ("label", *INT_COLUMNS)}
        src = DelimitedSource(path, names=COLUMNS, delimiter="\t", column_types=numeric,
                              block_bytes=self.opts.get("block_bytes", DEFAULT_BLOCK_BYTES))
        for block in src.blocks(chunk_rows):
            labels = labels_from(block.column("label"), block)
            cols = [criteo_log2(to_float(block.column(c), block, c), block, c) for c in INT_COLUMNS]
            cols += [block.column(c) for c in CAT_COLUMNS]
            yield Chunk(cols, labels, block.locate)
