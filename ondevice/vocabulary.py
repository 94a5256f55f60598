"""The vocabulary a raw-feature artefact carries: its lookup tables and their bytes.

A raw artefact (``export --inputs raw``, :mod:`ondevice.export.raw`) looks every raw value up
inside the graph, so the vocabulary ships in the model file and counts against the byte
budget (issue 16). This module lists the tables (which key maps to which id, in graph order)
and counts their serialized bytes, for the exporter that builds the graph and for the byte
model of every searcher (``ByteAccountant.vocabulary_bytes``) without importing the exporter.

Tables, for a schema's raw plan (``ondevice.export.raw.raw_plan``):

* numbers whose rule is elementwise (``criteo_log2``, ``floor``): one ``ai.onnx.ml``
  ``TreeEnsemble`` (opset 5) for all of them, a binary search per column over the float64
  values where ``prepare``'s id changes (:func:`buckets`: the rule and the lookup folded into
  sorted edges, exact for every float64, NaN -> the missing value's id);
* one two-level ``LabelEncoder`` lookup shared by the string columns: level 1 maps each
  distinct string to ``u`` (default ``U``, unknown); level 2 maps ``u + c * (U + 1)`` (``c``
  the column) to the field's id (default 0, the OOV row);
* one table per column for Avazu dates and ``edges:`` buckets (int64 key -> id).

An id whose embedding row maps to the field's OOV row in every embedding table (a row pruned
to OOV, :class:`~ondevice.embedding.row_pruned.RowPrunedEmbedding`) gives the same output as
the OOV id itself, so its key leaves the tables (``dropped``): row pruning saves the key too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from onnx import AttributeProto
from onnx import helper as oh
from onnx import numpy_helper as onh

from ondevice.errors import BrokenPromiseError
from ondevice.schema import Field, Schema, log2_rule

ML_DOMAIN = "ai.onnx.ml"
INT64_MAX = 2**63 - 1
#: key of a missing value in int64 tables (no transform produces it)
MISSING_KEY = INT64_MAX
INT64_MIN = -(2**63)
#: rules bucketed by the ``TreeEnsemble`` (elementwise float64 -> whole number, :func:`numeric_key`)
ELEMENTWISE = ("criteo_log2", "floor")
#: ``TreeEnsemble`` (ai.onnx.ml 5) node mode ``BRANCH_GTE``: ``x >= split`` is the true branch
BRANCH_GTE = 2

__all__ = ["BRANCH_GTE", "ELEMENTWISE", "MISSING_KEY", "Tables", "buckets", "dropped_ids", "int_keys", "key_bytes",
           "label_encoder", "numeric_key", "relabel_applies", "table_bytes", "tables", "tree_ensemble", "vocab_ids",
           "vocabulary_bytes"]


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


def numeric_key(v: np.ndarray, transform: str) -> np.ndarray:
    """``prepare``'s integer token of float64 values under ``transform`` (``criteo_log2``:
    ``x > 2 -> floor(ln(x)^2)`` else ``floor(x)``, :func:`ondevice.schema.log2_rule`;
    ``floor``; ``edges:`` bucket = searchsorted right); ``INT64_MIN`` where ``prepare`` refuses
    the value (no int64 token: ``±inf``, ``|t| >= 2^63``). NaN (missing) is not handled here."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if transform == "criteo_log2":
            t = log2_rule(v)
        elif transform == "floor":
            t = np.floor(v)
        else:
            edges = np.asarray(sorted(float(e) for e in transform.split(":", 1)[1].split(",")), dtype=np.float64)
            return np.searchsorted(edges, v, side="right").astype(np.int64)
        ok = (t >= -(2.0**63)) & (t < 2.0**63)
        out = np.full(t.shape, INT64_MIN, dtype=np.int64)
        out[ok] = t[ok].astype(np.int64)
        return out


def _ordered(x: np.ndarray) -> np.ndarray:
    """float64 -> int64 preserving order (consecutive doubles are consecutive integers)."""
    i = np.asarray(x, dtype=np.float64).view(np.int64)
    return np.where(i >= 0, i, -(i & np.int64(INT64_MAX)))


def _unordered(i: np.ndarray) -> np.ndarray:
    i = np.asarray(i, dtype=np.int64)
    return np.where(i >= 0, i, (-i) | np.int64(INT64_MIN)).view(np.float64)


def _log2_edges(ks: np.ndarray) -> np.ndarray:
    """Per ``k >= 1``: the smallest float64 ``x > 2`` with ``floor(ln(x)^2) >= k`` as ``prepare``
    computes it (NumPy's ``log``; bisection over the doubles around ``exp(sqrt(k))``); ``inf``
    when no double reaches ``k``."""
    ks = np.asarray(ks, dtype=np.int64)
    guess = np.exp(np.sqrt(ks.astype(np.float64)))
    with np.errstate(over="ignore"):
        lo, hi = _ordered(guess * (1 - 1e-7)), _ordered(np.minimum(guess * (1 + 1e-7), np.finfo(np.float64).max))
    reach = numeric_key(_unordered(hi), "criteo_log2") >= ks
    if (numeric_key(_unordered(lo), "criteo_log2") >= ks).any():
        raise BrokenPromiseError("criteo_log2: a bucket edge lies outside its bracket; export with --inputs ids")
    while (hi - lo > 1).any():
        mid = lo + (hi - lo) // 2
        up = numeric_key(_unordered(mid), "criteo_log2") >= ks
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    return np.where(reach, _unordered(hi), np.inf)


def buckets(transform: str, pairs: list[tuple[int, int]]) -> tuple[list[float], list[int]]:
    """``prepare``'s rule and the vocabulary lookup of one numeric column as sorted float64
    edges ``e_1 < ... < e_m`` and ids ``v_0 .. v_m``: a finite or infinite ``x`` gets ``v_i``
    with ``i`` = the number of edges ``<= x`` (NaN is handled by the caller).

    ``pairs``: (integer token, id) kept. A value whose token is not kept, or that ``prepare``
    refuses (``±inf``, no int64 token), gets id 0. ``floor`` changes at integers (at the next
    double above ``k`` beyond ``2^53``); ``criteo_log2`` at integers up to 2, just above 2, and
    at :func:`_log2_edges`. Every interval is checked at both ends against :func:`numeric_key`.
    """
    ids = dict(pairs)
    found: set[float] = set()
    for k in ids:
        if transform == "floor" or k <= 2:
            found.add(float(k))
            up = max(float(k + 1), float(np.nextafter(float(k), np.inf)))
            found.add(up if transform == "floor" or up <= 2 else 2.0)
    if transform == "criteo_log2":
        found.update((2.0, float(np.nextafter(2.0, 3.0))))
        logs = sorted({kk for k in ids if k >= 0 for kk in (k, k + 1) if kk >= 1})
        if logs:
            found.update(float(e) for e in _log2_edges(np.asarray(logs)) if np.isfinite(e))
    edges = np.asarray(sorted(found), dtype=np.float64)
    top = np.finfo(np.float64).max
    starts = np.concatenate([[-top], edges])  # interval i = [starts[i], ends[i]]
    ends = np.concatenate([np.nextafter(edges, -np.inf), [top]])
    first, last = numeric_key(starts, transform), numeric_key(ends, transform)
    v_first = np.asarray([ids.get(int(k), 0) if k != INT64_MIN else 0 for k in first])
    v_last = np.asarray([ids.get(int(k), 0) if k != INT64_MIN else 0 for k in last])
    if not ((first == last) | ((v_first == 0) & (v_last == 0))).all():
        raise BrokenPromiseError(f"{transform}: the bucket edges do not follow prepare's rule; export with --inputs ids")
    out_e, out_v = [], [int(v_first[0])]
    for e, v in zip(edges.tolist(), v_first[1:].tolist(), strict=True):
        if v != out_v[-1]:
            out_e.append(e)
            out_v.append(int(v))
    return out_e, out_v


class Tables:
    """The lookup tables of one raw plan, in the order the graph builds them.

    ``trees``: field index -> (column of the ``numeric`` input, edges, ids, missing id) of the
    ``TreeEnsemble`` (:func:`buckets`; targets in this order); ``strings``: column of the
    ``categorical`` input -> [(text, id)] of the two-level lookup; ``in_lookup``: field index ->
    its column there; ``single``: field index -> (keys, ids) of a per-column int64 table (Avazu
    dates, ``edges:``).
    """

    def __init__(self) -> None:
        self.trees: dict[int, tuple[int, list[float], list[int], int]] = {}
        self.strings: dict[int, list[tuple[str, int]]] = {}
        self.in_lookup: dict[int, int] = {}
        self.single: dict[int, tuple[list[int], list[int]]] = {}

    def two_level(self) -> tuple[list[str], list[int], int, list[int], list[int]]:
        """Level 1: each distinct text -> ``u`` in ``[0, U)``, default ``U`` (unknown text);
        the stride ``S = U + 1``; level 2: ``u + c * S`` (``c`` the column) -> the field's id
        (default 0, the OOV row: unknown texts and texts kept in another column only).
        Column-major keys keep level 1's values small varints (3 bytes per text, not 4)."""
        union: dict[str, int] = {}
        for pairs in self.strings.values():
            for key, _ in pairs:
                union.setdefault(key, len(union))
        stride = len(union) + 1
        keys2, values2 = [], []
        for c, pairs in self.strings.items():
            for key, i in pairs:
                keys2.append(union[key] + c * stride)
                values2.append(i)
        return list(union), list(union.values()), stride, keys2, values2


def tables(schema: Schema, plan: Mapping[str, Any], dropped: Mapping[int, Collection[int]] | None = None,
           relabel: Sequence[Any] | None = None) -> Tables:
    """The tables of ``schema``'s raw ``plan``; ids in ``dropped[field]`` keep no key (they read OOV);
    ``relabel[field][id]``: the id the table emits instead (a row-pruned model re-indexed to its
    kept rows, :func:`~ondevice.embedding.row_pruned.compact_rows`; the dropped ids map to 0)."""
    drop = {j: set(v) for j, v in (dropped or {}).items()}

    def new_id(j: int, i: int) -> int:
        return int(relabel[j][i]) if relabel is not None else i

    field_col = {f: c for c in plan["columns"] for f in c["fields"]}
    n_str = sum(1 for c in plan["columns"] if c["input"] == "categorical")
    aliases = plan.get("libfm_aliases") or []
    out = Tables()

    def kept(j: int, pairs: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
        return [(k, new_id(j, i)) for k, i in pairs if i not in drop.get(j, ())]

    simple = {j: f for j, f in enumerate(schema.fields) if field_col[f.name]["kind"] == "number"
              and f.encoding == "vocab" and (f.transform or "floor") in ELEMENTWISE}
    for j, f in simple.items():
        keys, values, missing_id = int_keys(f)
        edges, ids = buckets(f.transform or "floor", kept(j, list(zip(keys, values, strict=True))))
        missing_id = new_id(j, missing_id) if missing_id not in drop.get(j, ()) else 0
        out.trees[j] = (field_col[f.name]["index"], edges, ids, missing_id)
    if n_str:
        for j, f in enumerate(schema.fields):
            c = field_col[f.name]
            if c["kind"] != "string":
                continue
            ids = vocab_ids(f)
            pairs = list(ids.items())
            for alias in aliases:
                pairs += [(k + alias, v) for k, v in ids.items() if ":" not in k and k + alias not in ids]
            out.strings[c["index"]] = kept(j, pairs)
            out.in_lookup[j] = c["index"]
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
    """``ai.onnx.ml`` ``LabelEncoder`` (opset 4): string or int64 keys -> int64; a key list is
    never empty (the op needs one)."""
    if not keys:
        keys, values = [{"string": "\x00", "int": MISSING_KEY - 1}[kind]], [default]
    attrs: dict[str, Any] = {"values_int64s": [int(v) for v in values], "default_int64": int(default)}
    if kind == "string":
        attrs["keys_strings"] = list(keys)
    else:
        attrs["keys_int64s"] = [int(k) for k in keys]
    return oh.make_node("LabelEncoder", [x], [out], domain=ML_DOMAIN, **attrs)


def tree_ensemble(x: str, out: str, trees: list[tuple[int, list[float], list[int], int]]) -> Any:
    """``ai.onnx.ml`` ``TreeEnsemble`` (opset 5), float64 ``x [B, N]`` -> float64 ``out [B, T]``:
    target ``t`` is ``trees[t] = (column, edges, ids, missing id)`` looked up by a balanced
    binary search, every branch ``x >= split`` (:data:`BRANCH_GTE`). The root's split is
    ``-inf``: NaN (every comparison false) takes its false branch, a leaf holding the missing id.
    """
    feat: list[int] = []
    splits: list[float] = []
    t_node: list[int] = []
    t_leaf: list[int] = []
    f_node: list[int] = []
    f_leaf: list[int] = []
    roots: list[int] = []
    targets: list[int] = []
    weights: list[float] = []

    shared: dict[tuple[int, int], int] = {}

    def leaf(target: int, value: int) -> tuple[int, int]:  # one leaf per (target, id), shared by its intervals
        if (target, value) not in shared:
            shared[(target, value)] = len(weights)
            targets.append(target)
            weights.append(float(value))
        return shared[(target, value)], 1

    def branch(column: int, split: float) -> int:
        feat.append(column)
        splits.append(split)
        for lst in (t_node, t_leaf, f_node, f_leaf):
            lst.append(0)
        return len(feat) - 1

    def search(target: int, column: int, edges: list[float], ids: list[int], lo: int, hi: int) -> tuple[int, int]:
        if lo == hi:  # ids[lo] holds for edges[lo - 1] <= x < edges[lo]
            return leaf(target, ids[lo])
        mid = (lo + hi + 1) // 2
        n = branch(column, edges[mid - 1])
        t_node[n], t_leaf[n] = search(target, column, edges, ids, mid, hi)
        f_node[n], f_leaf[n] = search(target, column, edges, ids, lo, mid - 1)
        return n, 0

    for target, (column, edges, ids, missing) in enumerate(trees):
        root = branch(column, -math.inf)
        roots.append(root)
        t_node[root], t_leaf[root] = search(target, column, edges, ids, 0, len(ids) - 1)
        f_node[root], f_leaf[root] = leaf(target, missing)
    return oh.make_node("TreeEnsemble", [x], [out], domain=ML_DOMAIN, n_targets=len(trees), aggregate_function=1,
                        post_transform=0, tree_roots=roots, nodes_featureids=feat,
                        nodes_splits=onh.from_array(np.asarray(splits, dtype=np.float64), "splits"),
                        nodes_modes=onh.from_array(np.full(len(feat), BRANCH_GTE, dtype=np.uint8), "modes"),
                        nodes_truenodeids=t_node, nodes_trueleafs=t_leaf, nodes_falsenodeids=f_node,
                        nodes_falseleafs=f_leaf, leaf_targetids=targets,
                        leaf_weights=onh.from_array(np.asarray(weights, dtype=np.float64), "weights"))


def table_bytes(node: Any) -> int:
    """Serialized bytes of a ``LabelEncoder`` or ``TreeEnsemble`` node's table (its attributes, with their framing)."""
    return sum(a.ByteSize() + 2 + (a.ByteSize() >= 128) + (a.ByteSize() >= 16384) + (a.ByteSize() >= 2**21)
               for a in node.attribute if isinstance(a, AttributeProto))


def vocabulary_bytes(schema: Schema, plan: Mapping[str, Any], dropped: Mapping[int, Collection[int]] | None = None,
                     relabel: Sequence[Any] | None = None) -> int:
    """Bytes the raw artefact's vocabulary adds to the model file (every table, :func:`table_bytes`)."""
    t = tables(schema, plan, dropped, relabel)
    total = table_bytes(tree_ensemble("x", "y", list(t.trees.values()))) if t.trees else 0
    if t.strings:
        keys1, values1, stride, keys2, values2 = t.two_level()
        total += table_bytes(label_encoder("x", "y", keys1, values1, stride - 1, "string"))
        total += table_bytes(label_encoder("x", "y", keys2, values2, 0, "int"))
    total += sum(table_bytes(label_encoder("x", "y", k, v, 0, "int")) for k, v in t.single.values())
    return int(total)


def _varint(n: int) -> int:
    """Bytes of ``n`` as a protobuf varint (a negative int64 takes 10)."""
    return 10 if n < 0 else max(1, (int(n).bit_length() + 6) // 7)


_TREE_NODE_ATTRS = ("nodes_featureids", "nodes_splits", "nodes_modes", "nodes_truenodeids", "nodes_trueleafs",
                    "nodes_falsenodeids", "nodes_falseleafs")
_TREE_LEAF_ATTRS = ("leaf_targetids", "leaf_weights")


def key_bytes(schema: Schema, plan: Mapping[str, Any]) -> list[np.ndarray]:
    """Per field, float64 ``[vocab_f]``: the bytes each id's key(s) take in the tables of
    :func:`vocabulary_bytes` (every key kept), so leaving an id's keys out saves about that.

    ``ai.onnx.ml`` attributes are proto2 ``repeated`` fields (not packed): every int64 is a
    1-byte tag + its varint, every string a tag + length varint + its bytes; tensors (splits,
    weights) 8 B per float64. Per id:

    * two-level string lookup: level-2 key ``u + c·S`` and value (the id), 2 varints + 2 tags;
      level 1's text and its ``u``, divided among the columns that keep the same text;
    * ``TreeEnsemble`` (numbers): the id's leaf (target varint + 8 B weight) and, per edge
      between two intervals, one node (the tree's mean node bytes: 8 B split, 1 B mode,
      feature/child varints): all of it to the id beside an OOV interval, half to each id
      between two kept ones; the missing value's id: its leaf;
    * int64 tables (dates, ``edges:``): key and value, 2 varints + 2 tags.

    Id 0 (OOV) and identity/hashed fields take none. Exact for the string and int64 tables up to
    varints that shrink when keys leave (``u``, ``S``: dropping only lowers them) and the
    attributes' length prefixes, except a text several columns share: its level-1 entry stays
    until every column drops it, so dropping it in one column saves less than counted. The tree is
    not additive either: an id dropped between two kept ids leaves its edges (its estimate saves up
    to one node, ~21 B, more than the file does). Searchers rank with these and fit on exact bytes.
    """
    t = tables(schema, plan)
    out = [np.zeros(f.vocab_size, dtype=np.float64) for f in schema.fields]
    if t.strings:
        keys1, values1, stride, _, _ = t.two_level()
        u_of = dict(zip(keys1, values1, strict=True))
        shared: dict[str, int] = {}
        for pairs in t.strings.values():
            for key, _ in pairs:
                shared[key] = shared.get(key, 0) + 1
        field_of = {c: j for j, c in t.in_lookup.items()}
        for c, pairs in t.strings.items():
            arr = out[field_of[c]]
            for key, i in pairs:
                n = len(key.encode("utf-8"))
                level1 = 1 + _varint(n) + n + 1 + _varint(u_of[key])
                arr[i] += level1 / shared[key] + 1 + _varint(u_of[key] + c * stride) + 1 + _varint(i)
    if t.trees:
        node = tree_ensemble("x", "y", list(t.trees.values()))
        attrs = {a.name: a for a in node.attribute}
        n_nodes = len(attrs["nodes_featureids"].ints)
        n_leaves = len(attrs["leaf_targetids"].ints)
        per_node = sum(attrs[a].ByteSize() + 2 for a in _TREE_NODE_ATTRS) / n_nodes
        per_leaf = sum(attrs[a].ByteSize() + 2 for a in _TREE_LEAF_ATTRS) / n_leaves
        for j, (_, _, ids, missing) in t.trees.items():
            arr = out[j]
            for v in {*ids, missing} - {0}:
                arr[v] += per_leaf
            for a, b in zip(ids[:-1], ids[1:], strict=True):  # one edge (node) between each pair
                for v, w in ((a, b), (b, a)):
                    if v:
                        arr[v] += per_node if w == 0 else per_node / 2
    for j, (keys, values) in t.single.items():
        for k, i in zip(keys, values, strict=True):
            out[j][i] += 1 + _varint(k) + 1 + _varint(i)
    return out


def relabel_applies(schema: Schema, plan: dict[str, Any], relabel: list[Any]) -> bool:
    """Whether the encoder can emit ``relabel``'s ids: every field whose id the graph computes
    without a table (identity numbers, hashed ids from the app) keeps its ids unchanged."""
    field_col = {f: c for c in plan["columns"] for f in c["fields"]}
    for j, f in enumerate(schema.fields):
        if field_col[f.name]["kind"] == "hashed" or f.encoding == "identity":
            r = np.asarray(relabel[j])
            if not np.array_equal(r, np.arange(len(r))):
                return False
    return True


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
