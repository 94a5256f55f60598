"""The schema: which fields a dataset has and how raw values become ids.

Every encoded dataset, checkpoint and artefact carries a ``schema.json`` so the app on the
device can encode features exactly as training did.

Id convention (the same for every field and every format):

* id ``0`` is the field's **OOV row**: values rarer than ``min_count``, values never seen
  in the training split, missing values of hashed fields' overflow, and (inside the exported
  graph) any id outside ``[0, vocab_size)``, negative ids included.
* ids ``1 .. vocab_size-1`` are the kept values, most frequent first (vocabulary encoding),
  or ``1 + hash(value) mod hash_buckets`` (hash encoding).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ondevice.errors import BadInputError, SchemaMismatchError
from ondevice.io import atomic_write_json, read_json

SCHEMA_VERSION = 1
OOV_ID = 0

Task = Literal["ctr", "topk"]
Encoding = Literal["vocab", "hash", "identity"]
Role = Literal["user", "item", "context"]


@dataclass
class Field:
    """One input field.

    Parameters
    ----------
    name : column name in the raw data (``C14``, ``user``, ``I3``).
    vocab_size : number of rows the field's embedding table needs, OOV row included.
    encoding : ``vocab`` (kept values listed in ``values``), ``hash`` (``hash_buckets``
        buckets behind the OOV row) or ``identity`` (raw value already an id, e.g. libFM
        feature indices or 0-based user/item ids; ids are shifted by one for the OOV row).
    values : for ``vocab`` encoding, the raw values of ids 1, 2, ... in order.
    transform : how a raw value is turned into the string that is looked up, e.g.
        ``criteo_log2`` for Criteo integer columns (x > 2 -> floor(ln(x)^2)).
    role : ``user``/``item`` for top-K tasks, ``context`` otherwise.
    """

    name: str
    vocab_size: int
    encoding: Encoding = "vocab"
    values: list[str] | None = None
    hash_buckets: int | None = None
    transform: str | None = None
    role: Role = "context"
    offset: int | None = None  # identity encoding: raw id = value - offset (libFM global index)

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise BadInputError(f"field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")

    def to_dict(self, *, include_values: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not include_values:
            d.pop("values")
        return {k: v for k, v in d.items() if v is not None}


def log2_rule(v: np.ndarray) -> np.ndarray:
    """The ``criteo_log2`` transform of float64 values: ``x > 2 -> floor(ln(x)^2)``, else
    ``floor(x)`` (float64 out; ``prepare`` and the raw artefact's bucket edges both use it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 2, np.floor(np.log(np.maximum(v, 1.0)) ** 2), np.floor(v))


def stable_hash(value: str, buckets: int) -> int:
    """Hash id for the hashing trick, identical on every platform and Python run.

    Returns an id in ``[1, buckets]`` (0 stays the OOV row). Uses the first 8 bytes of
    blake2b, so apps can reproduce it in any language.
    """
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % buckets


@dataclass
class Schema:
    """The fields of a dataset plus the task they serve."""

    task: Task
    fields: list[Field]
    label: str = "label"
    source_format: str = ""
    version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.fields]

    @property
    def total_vocab(self) -> int:
        return sum(self.vocab_sizes)

    def field_index(self, role: Role) -> int:
        for i, f in enumerate(self.fields):
            if f.role == role:
                return i
        raise SchemaMismatchError(f"schema has no field with role {role!r}; top-K data needs a user and an item field")

    def field_positions(self, names: Sequence[str]) -> list[int]:
        """Positions of the named fields, in the given order; a one-line error for a missing name."""
        index = {n: i for i, n in enumerate(self.field_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise SchemaMismatchError(f"field {missing[0]!r} is not in the schema (fields: {', '.join(self.field_names)}); "
                                      "pass the data the run was trained on")
        return [index[n] for n in names]

    def select_fields(self, keep: Sequence[int]) -> Schema:
        """The schema of the kept fields only (feature selection), in ``keep``'s order.

        Each kept field keeps its name, vocabulary, OOV row, hashing and transform, so the
        app encodes it as before and sends only these columns. The fingerprint changes
        (ids of a ``[B, len(keep)]`` input mean something else); ``extra["field_selection"]``
        records the parent's fingerprint and field names.
        """
        keep = [int(i) for i in keep]
        if not keep:
            raise BadInputError("a field selection must keep at least one field")
        bad = [i for i in keep if not 0 <= i < self.num_fields]
        if bad:
            raise BadInputError(f"field index {bad[0]} is out of range for {self.num_fields} fields; use 0..{self.num_fields - 1}")
        if len(set(keep)) != len(keep):
            raise BadInputError(f"a field selection lists a field twice: {keep}")
        extra = copy.deepcopy(self.extra)
        extra["field_selection"] = {"parent_fingerprint": self.fingerprint(), "parent_fields": self.field_names,
                                    "kept": [self.fields[i].name for i in keep]}
        return Schema(task=self.task, fields=[copy.deepcopy(self.fields[i]) for i in keep], label=self.label,
                      source_format=self.source_format, version=self.version, extra=extra)

    def fingerprint(self) -> str:
        """Short hash of names, sizes and encodings: two runs match iff ids mean the same."""
        h = hashlib.sha256()
        for f in self.fields:
            h.update(f"{f.name}|{f.vocab_size}|{f.encoding}|{f.hash_buckets}|{f.transform}|".encode())
            if f.values is not None:
                for v in f.values:
                    h.update(v.encode("utf-8", "surrogateescape"))
                    h.update(b"\x00")
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ I/O
    def to_dict(self, *, include_values: bool = True) -> dict[str, Any]:
        return {
            "version": self.version,
            "task": self.task,
            "label": self.label,
            "source_format": self.source_format,
            "fingerprint": self.fingerprint(),
            "fields": [f.to_dict(include_values=include_values) for f in self.fields],
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "schema") -> Schema:
        try:
            version = int(d.get("version", 0))
            if version != SCHEMA_VERSION:
                raise SchemaMismatchError(
                    f"{source}: schema version {version} != supported {SCHEMA_VERSION}; re-run `ondevice prepare`"
                )
            fields = [Field(**fd) for fd in d["fields"]]
            schema = cls(
                task=d["task"],
                fields=fields,
                label=d.get("label", "label"),
                source_format=d.get("source_format", ""),
                version=version,
                extra=d.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SchemaMismatchError(f"{source}: malformed schema ({str(err)[:160]}); re-run `ondevice prepare`") from None
        if schema.task not in ("ctr", "topk"):
            raise SchemaMismatchError(f"{source}: unknown task {schema.task!r}; expected 'ctr' or 'topk'")
        return schema

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        return cls.from_dict(read_json(path, what="schema"), source=str(path))

    # ------------------------------------------------------------------ checks
    def check_compatible(self, other: Schema, *, what: str = "checkpoint") -> None:
        if self.fingerprint() != other.fingerprint():
            raise SchemaMismatchError(
                f"{what} schema (fingerprint {other.fingerprint()}) differs from the data's "
                f"({self.fingerprint()}); they come from different `prepare` runs, re-train or pass the matching data"
            )


def input_contract(schema: Schema, max_names: int = 12, encoding: str = "ids") -> dict[str, Any]:
    """The artefact's inputs in words, and whether they differ from the full model's (feature selection).

    ``changed`` is True when ``schema`` keeps a subset of a parent schema's fields
    (``extra["field_selection"]``, written by :meth:`Schema.select_fields`); ``text`` is the
    one line ``compress``, ``summary.md`` and the manifest print. ``encoding``: ``ids`` (the
    app encodes with ``schema.json``) or ``raw`` (the field values as in the data, encoded in
    the graph: ``manifest["raw_inputs"]``).
    """
    names = schema.field_names
    what = f"ids [batch, {len(names)}]" if encoding == "ids" else "raw values"
    how = "Encode the kept fields as before (schema.json)" if encoding == "ids" else "Send the kept fields' raw values"
    sel = schema.extra.get("field_selection") if isinstance(schema.extra, dict) else None

    def _list(items: list[str]) -> str:
        return ", ".join(items[:max_names]) + (f", … (+{len(items) - max_names})" if len(items) > max_names else "")

    if schema.task != "ctr":
        return {"changed": False, "fields": names, "text": "inputs unchanged: the user's vector [batch, dim]"}
    if not sel:
        return {"changed": False, "fields": names, "encoding": encoding,
                "text": f"inputs unchanged: {what} of every field ({_list(names)})"}
    parent = list(sel.get("parent_fields") or [])
    dropped = [n for n in parent if n not in names]
    text = (f"INPUTS CHANGED: the artefact takes {what} {'=' if encoding == 'ids' else 'of'} {len(names)} of the full model's "
            f"{len(parent)} fields, in this order: {_list(names)}; dropped {len(dropped)}: {_list(dropped)}. "
            f"{how} and send only them")
    return {"changed": True, "fields": names, "encoding": encoding, "parent_fields": parent, "dropped_fields": dropped,
            "parent_fingerprint": sel.get("parent_fingerprint"), "text": text}
