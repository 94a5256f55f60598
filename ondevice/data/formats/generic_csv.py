"""Any CSV/TSV file, described by a small spec file (JSON or TOML).

Pass the spec with ``--spec FILE`` (``format_options={"spec": FILE}``). Keys (unknown keys
are an error)::

    # spec.toml
    delimiter = ","          # one character; "\\t" for TSV (default ",")
    header = true            # the first line holds column names (default true)
    columns = ["a", "b"]     # every column name in file order; required when header = false
    quoting = true           # honour "quoted, values" (default true)
    label = "click"          # CTR: the label column; a value > label_threshold is positive
    label_threshold = 0.0    # default 0, so 0/1 and -1/1 labels both work
    categorical = ["site", "app"]         # categorical columns, used as they are
    user = "user_id"         # top-K instead of CTR: the user and item columns, no label
    item = "item_id"

    [numeric]                # numeric columns -> categorical by a bucketing rule
    price = "log2"           # Criteo rule: x > 2 -> floor(ln(x)^2), else floor(x)
    count = "int"            # floor(x)
    age = { edges = [18, 25, 35, 50] }    # bucket k = number of edges <= x (0..len(edges))

    [hash_buckets]           # optional hashing trick per column (``--hash`` overrides)
    device_ip = 100000

The same in JSON: ``{"delimiter": ",", "label": "click", "categorical": [...],
"numeric": {"price": "log2", "age": {"edges": [18, 25]}}, "hash_buckets": {...}}``.

Field order: ``categorical`` then ``numeric`` (CTR), or ``user, item`` (top-K). An empty
cell is the column's missing value, a value of its own. Numeric cells must be finite numbers
(``inf``/``1e999`` are refused with their line; ``int``/``log2`` values must fit int64).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ondevice.data.formats.base import (
    DEFAULT_BLOCK_BYTES,
    Block,
    Chunk,
    DelimitedSource,
    FieldSpec,
    RawFormat,
    criteo_log2,
    int_tokens,
    labels_from,
    to_float,
)
from ondevice.errors import BadInputError, DataFormatError

SPEC_KEYS = {"delimiter", "header", "columns", "quoting", "label", "label_threshold", "categorical", "user", "item",
             "numeric", "hash_buckets", "block_bytes"}
NUMERIC_RULES = ("log2", "int")


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read and validate a CSV spec file (``.toml`` or JSON)."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"csv spec file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            import tomllib

            spec = tomllib.loads(text)
        else:
            spec = json.loads(text)
    except Exception as err:  # noqa: BLE001 - both parsers' errors become one message
        raise BadInputError(f"csv spec {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {err}") from None
    if not isinstance(spec, dict):
        raise BadInputError(f"csv spec {p} must be a table/object of keys")
    from ondevice.validation import SPEC_SCHEMA, validate

    validate(spec, SPEC_SCHEMA, f"csv spec {p}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise BadInputError(f"csv spec {p}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    topk = "user" in spec or "item" in spec
    if topk and not ("user" in spec and "item" in spec):
        raise BadInputError(f"csv spec {p}: a top-K spec needs both 'user' and 'item'")
    if topk and ("label" in spec or spec.get("categorical") or spec.get("numeric")):
        raise BadInputError(f"csv spec {p}: give either user/item (top-K) or label + categorical/numeric (CTR), not both")
    if not topk and "label" not in spec:
        raise BadInputError(f"csv spec {p}: missing 'label' (the CTR label column), or give 'user' and 'item' for top-K")
    if not topk and not (spec.get("categorical") or spec.get("numeric")):
        raise BadInputError(f"csv spec {p}: no feature columns; list them under 'categorical' and/or 'numeric'")
    delim = spec.get("delimiter", ",")
    if not isinstance(delim, str) or len(delim) != 1:
        raise BadInputError(f"csv spec {p}: delimiter must be one character, got {delim!r}")
    for col, rule in (spec.get("numeric") or {}).items():
        ok = rule in NUMERIC_RULES or (isinstance(rule, Mapping) and set(rule) == {"edges"}
                                       and all(isinstance(e, (int, float)) for e in rule["edges"]))
        if not ok:
            raise BadInputError(f"csv spec {p}: numeric column {col!r} has rule {rule!r}; expected 'log2', 'int' or {{edges = [..]}}")
    if not spec.get("header", True) and not spec.get("columns"):
        raise BadInputError(f"csv spec {p}: header = false needs 'columns' (every column name in order)")
    return spec


class CsvFormat(RawFormat):
    name = "csv"
    task = "ctr"
    options = {"spec": "path of the JSON/TOML spec file describing the columns (required)",
               "block_bytes": "bytes of text parsed at a time (default: the spec's block_bytes, else 8 MiB)"}

    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        if "spec" not in self.opts:
            raise BadInputError("format csv needs a spec file: --spec FILE (see ondevice.data.formats.generic_csv)")
        spec = load_spec(self.opts["spec"])
        self.spec = spec
        self.task = "topk" if "user" in spec else "ctr"  # type: ignore[misc]
        self.label_rule = "" if self.task == "topk" else f"{spec['label']} > {spec.get('label_threshold', 0.0)}"  # type: ignore[misc]
        self.header = bool(spec.get("header", True))
        self.numeric: dict[str, Any] = dict(spec.get("numeric") or {})
        if self.task == "topk":
            self.feature_cols = [spec["user"], spec["item"]]
            fields = [FieldSpec(spec["user"], role="user"), FieldSpec(spec["item"], role="item")]
        else:
            self.feature_cols = list(spec.get("categorical") or []) + list(self.numeric)
            fields = [FieldSpec(c) for c in spec.get("categorical") or []]
            fields += [FieldSpec(c, transform=_rule_name(r)) for c, r in self.numeric.items()]
        dup = {c for c in self.feature_cols if self.feature_cols.count(c) > 1}
        if dup:
            raise BadInputError(f"csv spec: column {sorted(dup)[0]!r} is listed twice")
        for path in inputs:
            names = self._source(path).names
            needed = self.feature_cols + ([spec["label"]] if self.task == "ctr" else [])
            missing = [c for c in needed if c not in names]
            if missing:
                raise DataFormatError(f"{path} line 1: no column {missing[0]!r}; columns are {', '.join(names)}")
        return fields

    def default_hash_buckets(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in (self.spec.get("hash_buckets") or {}).items()}

    def _source(self, path: Path) -> DelimitedSource:
        spec = self.spec
        return DelimitedSource(
            path,
            names=spec.get("columns") if not self.header or spec.get("columns") else None,
            delimiter=spec.get("delimiter", ","),
            header=self.header,
            quoting=bool(spec.get("quoting", True)),
            block_bytes=self.opts.get("block_bytes", spec.get("block_bytes", DEFAULT_BLOCK_BYTES)),
        )

    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        for block in self._source(path).blocks(chunk_rows):
            labels = None
            if self.task == "ctr":
                labels = labels_from(block.column(self.spec["label"]), block, self.spec["label"],
                                     float(self.spec.get("label_threshold", 0.0)))
            cols: list[pa.Array] = []
            for c in self.feature_cols:
                col = block.column(c)
                if c in self.numeric:
                    col = _bucket(to_float(col, block, c), self.numeric[c], block, c)
                cols.append(col)
            yield Chunk(cols, labels, block.locate)

    def schema_extra(self) -> dict[str, Any]:
        return {"label_rule": self.label_rule, "numeric_rules": self.numeric} if self.task == "ctr" else {}


def _rule_name(rule: Any) -> str:
    if rule == "log2":
        return "criteo_log2"
    if rule == "int":
        return "floor"
    return "edges:" + ",".join(str(e) for e in rule["edges"])


def _bucket(x: pa.Array, rule: Any, block: Block, what: str) -> pa.Array:
    if rule == "log2":
        return criteo_log2(x, block, what)
    if rule == "int":
        return int_tokens(x, block, what)
    edges = np.asarray(sorted(rule["edges"]), dtype=np.float64)
    v = x.to_numpy(zero_copy_only=False)
    missing = np.isnan(v)
    return pa.array(np.searchsorted(edges, np.where(missing, 0.0, v), side="right").astype(np.int64), mask=missing)

