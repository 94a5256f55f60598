"""The vocabulary a raw-feature artefact carries: its ``LabelEncoder`` tables and their bytes.

A raw artefact (``export --inputs raw``, :mod:`ondevice.export.raw`) looks every raw value up
inside the graph, so the vocabulary ships in the model file and counts against the byte
budget (issue 16). This module lists the tables (which key maps to which id, in graph order)
and counts their serialized bytes, for the exporter that builds the graph and for the byte
model of every searcher (``ByteAccountant.vocabulary_bytes``) without importing the exporter.

Tables, for a schema's raw plan (``ondevice.export.raw.raw_plan``):

* one two-level lookup shared by every vocabulary column (strings; numbers whose rule is
  elementwise, ``criteo_log2``/``floor``): level 1, one table per raw input, maps each distinct
  key of the input to ``u * W`` (default ``-W``); level 2 maps ``u * W + c`` (``c`` the column
  of the ``[B, W]`` block) to the field's id (default 0, the OOV row);
* one table per column for Avazu dates and ``edges:`` buckets (int64 key -> id).

An id whose embedding row maps to the field's OOV row in every embedding table (a row pruned
to OOV, :class:`~ondevice.embedding.row_pruned.RowPrunedEmbedding`) gives the same output as
the OOV id itself, so its key leaves the tables (``dropped``): row pruning saves the key too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from onnx import AttributeProto
from onnx import helper as oh
from onnx import numpy_helper as onh

from ondevice.schema import Field, Schema

ML_DOMAIN = "ai.onnx.ml"
INT64_MAX = 2**63 - 1
#: key of a missing value in int64 tables (no transform produces it)
MISSING_KEY = INT64_MAX
#: rules looked up through the shared two-level lookup (elementwise float64 -> whole number)
ELEMENTWISE = ("criteo_log2", "floor")

__all__ = ["ELEMENTWISE", "MISSING_KEY", "Tables", "dropped_ids", "int_keys", "label_encoder", "table_bytes", "tables",
           "vocab_ids", "vocabulary_bytes"]


def vocab_ids(f: Field) -> dict[str, int]:
    """Token -> id of a vocabulary field (id 0 is OOV)."""
    return {v: i + 1 for i, v in enumerate(f.values or [])}


def int_keys(f: Field) -> tuple[list[int], list[int], int]:
    """Integer tokens of a numeric vocab field -> ids, plus the id of the missing value ``""``."""
    keys, values, missing = [], [], 0
    for v, i in vocab_ids(f).items():
        if v == "":
            missing = i
            continue
        try:
            keys.append(int(v))
        except ValueError:
            continue  # a non-integer token can never come out of a numeric transform
        values.append(i)
    return keys, values, missing


def _float_key(key: Any) -> Any:
    """A float64 key as a hashable dict key (all NaNs are one key, -0.0 is 0.0)."""
    k = float(key)
    return "nan" if math.isnan(k) else k + 0.0


class Tables:
    """The lookup tables of one raw plan, in the order the graph builds them.

    ``blocks``: (input, kind, width, {column: [(key, id)]}) of the two-level lookup;
    ``in_lookup``: field index -> column of the lookup block; ``single``: field index ->
    (keys, ids) of a per-column int64 table (Avazu dates, ``edges:``).
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[str, str, int, dict[int, list[tuple[Any, int]]]]] = []
        self.in_lookup: dict[int, int] = {}
        self.single: dict[int, tuple[list[int], list[int]]] = {}

    @property
    def width(self) -> int:
        return sum(b[2] for b in self.blocks)

    def two_level(self) -> tuple[list[tuple[str, str, list[Any], list[int]]], list[int], list[int]]:
        """Level-1 tables (input, kind, keys, values ``u * W``) and the level-2 keys and ids."""
        w = self.width
        level1, keys2, values2 = [], [], []
        u0 = start = 0
        for x, kind, width, per_column in self.blocks:
            union: dict[Any, int] = {}
            norm = _float_key if kind == "float" else (lambda k: k)
            for pairs in per_column.values():
                for key, _ in pairs:
                    union.setdefault(norm(key), u0 + len(union))
            for k, pairs in per_column.items():
                for key, i in pairs:
                    keys2.append(union[norm(key)] * w + start + k)
                    values2.append(i)
            keys1 = [float(k) for k in union] if kind == "float" else list(union)  # "nan" -> NaN
            level1.append((x, kind, keys1, [u * w for u in union.values()]))
            u0 += len(union)
            start += width
        return level1, keys2, values2


def tables(schema: Schema, plan: Mapping[str, Any], dropped: Mapping[int, Collection[int]] | None = None) -> Tables:
    """The tables of ``schema``'s raw ``plan``; ids in ``dropped[field]`` keep no key (they read OOV)."""
    drop = {j: set(v) for j, v in (dropped or {}).items()}
    field_col = {f: c for c in plan["columns"] for f in c["fields"]}
    n_num = sum(1 for c in plan["columns"] if c["input"] == "numeric")
    n_str = sum(1 for c in plan["columns"] if c["input"] == "categorical")
    aliases = plan.get("libfm_aliases") or []
    out = Tables()

    def kept(j: int, pairs: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
        return [(k, i) for k, i in pairs if i not in drop.get(j, ())] if j in drop else pairs

    simple = {j: f for j, f in enumerate(schema.fields) if field_col[f.name]["kind"] == "number"
              and f.encoding == "vocab" and (f.transform or "floor") in ELEMENTWISE}
    if simple:
        per_column: dict[int, list[tuple[Any, int]]] = {}
        for j, f in simple.items():
            keys, values, missing_id = int_keys(f)
            pairs = [(float(k), i) for k, i in zip(keys, values, strict=True)]
            per_column[field_col[f.name]["index"]] = kept(j, pairs + ([(float("nan"), missing_id)] if missing_id else []))
        out.blocks.append(("numeric", "float", n_num, per_column))
        out.in_lookup.update({j: field_col[f.name]["index"] for j, f in simple.items()})
    if n_str:
        first = out.width
        per_column = {}
        for j, f in enumerate(schema.fields):
            c = field_col[f.name]
            if c["kind"] != "string":
                continue
            ids = vocab_ids(f)
            pairs = list(ids.items())
            for alias in aliases:
                pairs += [(k + alias, v) for k, v in ids.items() if ":" not in k and k + alias not in ids]
            per_column[c["index"]] = kept(j, pairs)
            out.in_lookup[j] = first + c["index"]
        out.blocks.append(("categorical", "string", n_str, per_column))
    for j, f in enumerate(schema.fields):
        if field_col[f.name]["kind"] != "number" or j in simple or f.encoding == "identity":
            continue
        keys, values, missing_id = int_keys(f)
        if missing_id and not (f.transform or "").startswith("avazu_"):
            keys, values = [*keys, MISSING_KEY], [*values, missing_id]
        pairs = kept(j, list(zip(keys, values, strict=True)))
        out.single[j] = ([k for k, _ in pairs], [i for _, i in pairs])
    return out


def label_encoder(x: str, out: str, keys: list[Any], values: list[int], default: int, kind: str) -> Any:
    """``ai.onnx.ml`` ``LabelEncoder`` (opset 4): string, int64 or float64 keys -> int64.

    float64 keys (``keys_tensor``) match bit for bit, ``NaN`` matches any NaN and ``-0.0``
    matches ``0.0`` (LabelEncoder-4); a key list is never empty (the op needs one).
    """
    if not keys:
        keys, values = [{"string": "\x00", "int": MISSING_KEY - 1, "float": -1.5}[kind]], [default]
    attrs: dict[str, Any] = {"values_int64s": [int(v) for v in values], "default_int64": int(default)}
    if kind == "string":
        attrs["keys_strings"] = list(keys)
    elif kind == "int":
        attrs["keys_int64s"] = [int(k) for k in keys]
    else:
        attrs["keys_tensor"] = onh.from_array(np.asarray(keys, dtype=np.float64), "keys")
    return oh.make_node("LabelEncoder", [x], [out], domain=ML_DOMAIN, **attrs)


def table_bytes(node: Any) -> int:
    """Serialized bytes of a ``LabelEncoder`` node's table (its attributes, with their framing)."""
    return sum(a.ByteSize() + 2 + (a.ByteSize() >= 128) + (a.ByteSize() >= 16384) + (a.ByteSize() >= 2**21)
               for a in node.attribute if isinstance(a, AttributeProto))


def vocabulary_bytes(schema: Schema, plan: Mapping[str, Any], dropped: Mapping[int, Collection[int]] | None = None) -> int:
    """Bytes the raw artefact's vocabulary adds to the model file (every table, :func:`table_bytes`)."""
    t = tables(schema, plan, dropped)
    total = 0
    if t.blocks:
        level1, keys2, values2 = t.two_level()
        total += sum(table_bytes(label_encoder("x", "y", k, v, -t.width, kind)) for _, kind, k, v in level1)
        total += table_bytes(label_encoder("x", "y", keys2, values2, 0, "int"))
    total += sum(table_bytes(label_encoder("x", "y", k, v, 0, "int")) for k, v in t.single.values())
    return int(total)


def dropped_ids(layers: list[Any], vocab_sizes: list[int]) -> dict[int, set[int]]:
    """Per field, the ids every embedding table in ``layers`` reads as the field's OOV row.

    A layer with ``remap_per_field`` and ``pruned_to == "oov"`` (row pruning) names its pruned
    ids; any other layer names none, so nothing is dropped unless every table pruned the id.
    """
    out: dict[int, set[int]] = {}
    for n, layer in enumerate(layers):
        if getattr(layer, "pruned_to", None) != "oov" or not hasattr(layer, "remap_per_field"):
            return {}
        per_field = {j: {int(i) for i in np.flatnonzero(np.asarray(r) == 0) if i != 0}
                     for j, r in enumerate(layer.remap_per_field())}
        out = per_field if n == 0 else {j: out.get(j, set()) & s for j, s in per_field.items()}
    if len(out) != len(vocab_sizes):
        return {}
    return {j: s for j, s in out.items() if s}
