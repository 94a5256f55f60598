"""Synthetic data with known structure, written in the real raw formats.

The generators write files that the ordinary loaders read (``prepare --format criteo``,
``--format libfm``, ``--format implicit``), so every code path that real data takes is
exercised by data whose ground truth is known.

CTR (:func:`generate_ctr`)
    * Categorical values follow a power law: field ``f`` has ``vocab[f]`` values and value
      of frequency rank ``r`` is drawn with probability ``∝ r^-alpha`` (Zipf, default
      ``alpha = 1.1``), so a few values are very common and most are rare, as in Criteo.
      Raw values are 8-hex-digit strings, a bijective mix of (field, rank), like Criteo's
      hashed categoricals.
    * Criteo integer columns ``I1..I13`` are log-normal counts with per-column missing
      rates (and the occasional ``-1`` in ``I2``), as in the Kaggle data.
    * The label comes from a planted logistic model::

          logit = b + sum_{f in important} e_f[v_f]                  (main effects)
                    + sum_{(f,g) in pairs} c_fg * a_f[v_f] * a_g[v_g] (interactions)
                    + w_I * z(ln(1 + I1))                            (one numeric effect)

      ``e_f[v] ~ N(0, s_f^2)`` per value, ``a_f[v]`` is a random ±1 sign per value, so an
      interaction has zero main effect and can only be learnt from the value *combination*
      of its two fields. ``b`` is solved (bisection on a sample) for the requested base
      rate (default 25 %). Everything is written to a JSON truth file.

Top-K (:func:`generate_topk`)
    Users and items have latent factors ``p_u, q_i ~ N(0, I/d)`` and item popularity
    ``pop_i ∝ rank^-alpha``. Each user draws ``n_u`` (log-normal) distinct items with
    probability ``∝ pop_i * exp(beta * p_u·q_i)``, sampled without replacement with the
    Gumbel-top-k trick (exact Plackett-Luce sampling). A seeded 20 % of each
    user's items (at least one, when the user has two or more) is the test set. Files are
    LightGCN-style ``user item item ...`` lines with 0-based ids (``train.txt``, ``test.txt``).

All output is deterministic by ``seed``, written chunk by chunk (memory does not grow with
``rows``), and atomic (temp file + rename).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ondevice.errors import BadInputError
from ondevice.io import atomic_write_json, check_writable_parent

CRITEO_INT = 13
CRITEO_CAT = 26
CTR_FORMATS = ("criteo", "libfm")
_MASK32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------- helpers
def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijection on 32-bit integers (xorshift-multiply, from the murmur3 finaliser)."""
    x = x.astype(np.uint64) & _MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & _MASK32
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & _MASK32
    x ^= x >> np.uint64(16)
    return x


def _hex_values(field: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct 8-hex-digit strings for a field (bijective in the rank)."""
    ranks = np.arange(size, dtype=np.uint64) + np.uint64(((field + 1) * 0x9E3779B1 + seed * 0x7F4A7C15) & 0xFFFFFFFF)
    mixed = _mix32(ranks & _MASK32)
    return np.char.mod("%08x", mixed.astype(np.int64)).astype(object)


def _zipf_cdf(size: int, alpha: float) -> np.ndarray:
    p = np.arange(1, size + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(p)
    return cdf / cdf[-1]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@contextlib.contextmanager
def _atomic_binary(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` (gzip when the name ends in ``.gz``); rename on success."""
    check_writable_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                    yield gz  # type: ignore[misc]
            else:
                yield raw
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _resolve_vocab(vocab: int | Sequence[int] | None, n: int) -> list[int]:
    if vocab is None:
        # Criteo-like spread of cardinalities: 4 .. 100K values, geometric.
        return [int(round(v)) for v in np.geomspace(4, 100_000, n)]
    if isinstance(vocab, int):
        sizes = [vocab] * n
    else:
        sizes = [int(v) for v in vocab]
        if len(sizes) != n:
            raise BadInputError(f"vocab has {len(sizes)} sizes but there are {n} categorical fields; give one size or {n}")
    if min(sizes) < 2:
        raise BadInputError(f"every vocabulary size must be >= 2, got {min(sizes)}")
    return sizes


# --------------------------------------------------------------------------- CTR
class _PlantedCTR:
    """The planted model and the row sampler (shared by every chunk)."""

    def __init__(self, names: list[str], sizes: list[int], *, seed: int, alpha: float, base_rate: float,
                 n_important: int, n_pairs: int, numeric: bool, latent_dim: int = 0, latent_fields: int = 0,
                 latent_std: float = 1.5) -> None:
        self.names, self.sizes, self.alpha, self.seed = names, sizes, alpha, seed
        rng = np.random.default_rng([seed, 1])
        self.cdfs = [_zipf_cdf(v, alpha) for v in sizes]
        n = len(sizes)
        if n_important + 2 * n_pairs > n:
            raise BadInputError(f"{n_important} important fields + {n_pairs} pairs need {n_important + 2 * n_pairs} fields, only {n} exist")
        order = rng.permutation(n)
        self.important = sorted(int(i) for i in order[:n_important])
        pair_fields = order[n_important : n_important + 2 * n_pairs]
        self.pairs = [tuple(sorted((int(pair_fields[2 * k]), int(pair_fields[2 * k + 1])))) for k in range(n_pairs)]
        self.stds = {f: float(s) for f, s in zip(self.important, np.linspace(1.2, 0.6, max(n_important, 1)), strict=False)}
        self.effects = {f: rng.normal(0.0, self.stds[f], size=sizes[f]) for f in self.important}
        self.pair_coef = [float(c) for c in np.linspace(1.0, 0.7, max(n_pairs, 1))[:n_pairs]]
        self.signs = {f: rng.choice(np.array([-1.0, 1.0]), size=sizes[f]) for p in self.pairs for f in p}
        # Latent-factor interactions (an FM term) among further fields, from their own stream so
        # that latent_dim=0 reproduces the data of earlier versions exactly.
        rest = [int(i) for i in order[n_important + 2 * n_pairs:]]
        self.latent = sorted(rest[:latent_fields]) if latent_dim > 0 else []
        self.latent_dim = int(latent_dim) if self.latent else 0
        n_lat_pairs = len(self.latent) * (len(self.latent) - 1) // 2
        # <v_f, v_g> with v ~ N(0, σ² I_k) has variance k σ⁴; P such pairs sum to std latent_std.
        self.latent_sigma = (latent_std ** 2 / max(1, n_lat_pairs * self.latent_dim)) ** 0.25 if self.latent else 0.0
        lat_rng = np.random.default_rng([seed, 4])
        self.vectors = {f: lat_rng.normal(0.0, self.latent_sigma, size=(sizes[f], self.latent_dim)) for f in self.latent}
        self.numeric_weight = 0.4 if numeric else 0.0
        self.intercept = 0.0
        self.intercept = self._solve_intercept(base_rate)

    def sample_ranks(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        out = np.empty((rows, len(self.sizes)), dtype=np.int64)
        for f, cdf in enumerate(self.cdfs):
            out[:, f] = np.minimum(np.searchsorted(cdf, rng.random(rows)), len(cdf) - 1)
        return out

    def logit(self, ranks: np.ndarray, numeric_z: np.ndarray | None) -> np.ndarray:
        z = np.full(ranks.shape[0], self.intercept)
        for f in self.important:
            z += self.effects[f][ranks[:, f]]
        for (f, g), c in zip(self.pairs, self.pair_coef, strict=True):
            z += c * self.signs[f][ranks[:, f]] * self.signs[g][ranks[:, g]]
        if self.latent:  # Σ_{f<g} <v_f, v_g> = (‖Σ v‖² − Σ ‖v‖²) / 2
            vs = np.stack([self.vectors[f][ranks[:, f]] for f in self.latent], axis=1)  # [rows, m, k]
            z += 0.5 * ((vs.sum(axis=1) ** 2).sum(axis=1) - (vs ** 2).sum(axis=(1, 2)))
        if numeric_z is not None and self.numeric_weight:
            z += self.numeric_weight * numeric_z
        return z

    def _solve_intercept(self, base_rate: float) -> float:
        rng = np.random.default_rng([self.seed, 2])
        ranks = self.sample_ranks(rng, 50_000)
        z0 = self.logit(ranks, rng.normal(size=50_000) if self.numeric_weight else None)
        lo, hi = -15.0, 15.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if _sigmoid(z0 + mid).mean() < base_rate:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def truth(self, values: list[np.ndarray]) -> dict[str, Any]:
        top = 10
        return {
            "intercept": self.intercept,
            "important_fields": [
                {
                    "field": self.names[f],
                    "effect_std": self.stds[f],
                    "effects_of_most_frequent_values": {
                        str(values[f][r]): float(self.effects[f][r]) for r in range(min(top, self.sizes[f]))
                    },
                }
                for f in self.important
            ],
            "interactions": [
                {"fields": [self.names[f], self.names[g]], "coefficient": c,
                 "form": "coefficient * sign_f[value_f] * sign_g[value_g], signs ±1 per value"}
                for (f, g), c in zip(self.pairs, self.pair_coef, strict=True)
            ],
            **({"latent_interactions": {
                "fields": [self.names[f] for f in self.latent], "dim": self.latent_dim, "sigma": self.latent_sigma,
                "form": "sum over pairs f<g of <v_f[value_f], v_g[value_g]>, v ~ N(0, sigma^2 I_dim) per value"}}
               if self.latent else {}),
        }


def _criteo_integers(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Criteo-like I1..I13: log-normal counts, per-column missing rates; returns (values, missing)."""
    miss_rate = np.array([0.45, 0.0, 0.2, 0.2, 0.05, 0.25, 0.05, 0.001, 0.05, 0.45, 0.05, 0.77, 0.2])
    mu = np.array([1.0, 3.0, 2.0, 1.5, 8.0, 4.0, 1.5, 2.5, 4.0, 0.3, 1.0, 0.5, 1.5])
    vals = np.floor(np.exp(rng.normal(mu, 1.3, size=(rows, CRITEO_INT)))).astype(np.int64) - 1
    vals[:, 1] = np.where(rng.random(rows) < 0.05, -1, vals[:, 1])  # I2 has -1s in Kaggle data
    vals[:, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]] = np.maximum(vals[:, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], 0)
    missing = rng.random((rows, CRITEO_INT)) < miss_rate
    return vals, missing


def _write_criteo_chunk(fh: BinaryIO, labels: np.ndarray, ints: np.ndarray, missing: np.ndarray,
                        cats: list[np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    cols: list[pa.Array] = [pa.array(labels.astype(np.int8))]
    for j in range(CRITEO_INT):
        cols.append(pa.array(ints[:, j], mask=missing[:, j]))
    empty = pa.scalar("", pa.string())
    for c in cats:
        cols.append(pc.fill_null(pa.array(c, type=pa.string()), empty))
    names = [f"c{i}" for i in range(len(cols))]
    table = pa.Table.from_arrays(cols, names=names)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, write_options=pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))
    fh.write(buf.getvalue())


def _write_libfm_chunk(fh: BinaryIO, labels: np.ndarray, ranks: np.ndarray, offsets: np.ndarray) -> None:
    idx = ranks + offsets[None, :]
    lab = np.where(labels > 0, "1", "-1").astype(object)
    parts = [lab]
    for f in range(idx.shape[1]):
        parts.append(np.char.add(idx[:, f].astype(str), ":1").astype(object))
    lines = parts[0]
    for p in parts[1:]:
        lines = lines + " " + p
    fh.write(("\n".join(lines.tolist()) + "\n").encode())


def generate_ctr(
    path: str | os.PathLike,
    rows: int,
    *,
    fields: int | None = None,
    vocab: int | Sequence[int] | None = None,
    seed: int = 0,
    format: str = "criteo",
    truth_path: str | os.PathLike | None = None,
    alpha: float = 1.1,
    base_rate: float = 0.25,
    n_important: int = 4,
    n_pairs: int = 2,
    missing_rate: float = 0.02,
    chunk_rows: int = 200_000,
    latent_dim: int = 0,
    latent_fields: int = 6,
) -> dict[str, Any]:
    """Write synthetic CTR data with a planted model; return the truth (also saved as JSON).

    Parameters
    ----------
    path : output file (``.gz`` gives a gzip file).
    rows : number of rows (10^4 .. 10^7 and beyond; written ``chunk_rows`` at a time).
    fields : number of categorical fields. ``criteo`` always has 13 integer + 26 hex
        columns (``fields`` must be None or 26); ``libfm`` defaults to 10 (like Frappe).
    vocab : values per categorical field (one int for all, or one per field). Default: a
        geometric spread from 4 to 100K, like Criteo's cardinalities.
    format : ``criteo`` (Kaggle DAC TSV: label, I1..I13, C1..C26) or ``libfm``
        (``label idx:1 ...`` with one global index range per field, label 1/-1).
    truth_path : JSON truth file; default ``<path>.truth.json``.
    alpha : Zipf exponent of value frequencies.
    missing_rate : fraction of empty categorical values (criteo format).
    latent_dim : > 0 adds a planted FM term among ``latent_fields`` further fields: every
        value has a ``latent_dim``-vector and the logit gains ``Σ_{f<g} <v_f, v_g>`` (std
        ≈ 1.5), so the embedding dimension matters (with 0, a dim-1 model can fit the
        planted logit). 0 keeps the data of earlier versions bit for bit.
    """
    n_cat, names = _check_ctr_options(format, rows, base_rate, fields)
    sizes = _resolve_vocab(vocab, n_cat)
    n_important = min(n_important, n_cat)
    n_pairs = min(n_pairs, (n_cat - n_important) // 2)
    if latent_dim < 0 or latent_fields < 0:
        raise BadInputError(f"latent_dim and latent_fields must be >= 0, got {latent_dim}, {latent_fields}")
    model = _PlantedCTR(names, sizes, seed=seed, alpha=alpha, base_rate=base_rate, n_important=n_important,
                        n_pairs=n_pairs, numeric=(format == "criteo"), latent_dim=latent_dim,
                        latent_fields=min(latent_fields, n_cat - n_important - 2 * n_pairs))
    values = [_hex_values(f, v, seed) for f, v in enumerate(sizes)] if format == "criteo" else \
        [np.arange(v) + int(np.sum(sizes[:f])) for f, v in enumerate(sizes)]
    path = Path(path)
    with _atomic_binary(path) as fh:
        positives = _write_ctr_rows(fh, model, format, values, sizes, rows=rows, seed=seed, chunk_rows=chunk_rows,
                                    missing_rate=missing_rate)
    truth: dict[str, Any] = {
        "kind": "ctr",
        "generator": "ondevice.data.generate.generate_ctr",
        "seed": seed,
        "rows": rows,
        "format": format,
        "file": path.name,
        "fields": names,
        "vocab": dict(zip(names, sizes, strict=True)),
        "zipf_alpha": alpha,
        "base_rate_target": base_rate,
        "positive_rate": positives / rows,
        **model.truth(values),
    }
    if format == "criteo":
        truth["numeric_effect"] = {"field": "I1", "weight": model.numeric_weight,
                                   "form": "weight * (ln(1 + I1) - 0.9) / 0.9, 0 when missing"}
        truth["categorical_missing_rate"] = missing_rate
    atomic_write_json(Path(truth_path) if truth_path else path.with_name(path.name + ".truth.json"), truth)
    return truth


def _check_ctr_options(format: str, rows: int, base_rate: float, fields: int | None) -> tuple[int, list[str]]:
    """Refuse impossible options; the number of categorical fields and their names (C1.. or f1..)."""
    if format not in CTR_FORMATS:
        raise BadInputError(f"unknown synthetic CTR format {format!r}; expected one of {', '.join(CTR_FORMATS)}")
    if rows < 1:
        raise BadInputError(f"rows must be >= 1, got {rows}")
    if not 0.0 < base_rate < 1.0:
        raise BadInputError(f"base_rate must be in (0, 1), got {base_rate}")
    if format == "criteo":
        if fields not in (None, CRITEO_CAT):
            raise BadInputError(f"the criteo format has exactly {CRITEO_CAT} categorical fields, got fields={fields}")
        return CRITEO_CAT, [f"C{i + 1}" for i in range(CRITEO_CAT)]
    n_cat = 10 if fields is None else int(fields)
    if n_cat < 1:
        raise BadInputError(f"fields must be >= 1, got {n_cat}")
    return n_cat, [f"f{i + 1}" for i in range(n_cat)]


def _write_ctr_rows(fh: BinaryIO, model: _PlantedCTR, format: str, values: list[np.ndarray], sizes: list[int], *,
                    rows: int, seed: int, chunk_rows: int, missing_rate: float) -> int:
    """Sample and write ``rows`` rows, ``chunk_rows`` at a time; returns the number of positive labels."""
    import pyarrow as pa

    value_arrays = [pa.array(v, type=pa.string()) for v in values] if format == "criteo" else []
    offsets = np.cumsum([0] + sizes[:-1]).astype(np.int64)
    positives = 0
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        rng = np.random.default_rng([seed, 3, start])  # per-chunk stream: chunk order independent
        ranks = model.sample_ranks(rng, n)
        if format == "criteo":
            labels = _write_criteo_sample(fh, model, rng, ranks, value_arrays, missing_rate)
        else:
            labels = (rng.random(n) < _sigmoid(model.logit(ranks, None))).astype(np.int8)
            _write_libfm_chunk(fh, labels, ranks, offsets)
        positives += int(labels.sum())
    return positives


def _write_criteo_sample(fh: BinaryIO, model: _PlantedCTR, rng: np.random.Generator, ranks: np.ndarray,
                         value_arrays: list[Any], missing_rate: float) -> np.ndarray:
    """One criteo chunk: integer columns (I1 carries the numeric effect), labels, hex values with gaps."""
    import pyarrow as pa

    n, n_cat = ranks.shape
    ints, missing = _criteo_integers(rng, n)
    numeric = np.log1p(np.maximum(ints[:, 0], 0))
    numeric_z = np.where(missing[:, 0], 0.0, (numeric - 0.9) / 0.9)
    labels = (rng.random(n) < _sigmoid(model.logit(ranks, numeric_z))).astype(np.int8)
    cat_missing = rng.random((n, n_cat)) < missing_rate
    cats = [value_arrays[f].take(pa.array(ranks[:, f], mask=cat_missing[:, f])) for f in range(n_cat)]
    _write_criteo_chunk(fh, labels, ints, missing, cats)
    return labels


# --------------------------------------------------------------------------- top-K
def generate_topk(
    out_dir: str | os.PathLike,
    *,
    users: int = 1000,
    items: int = 2000,
    mean_items: float = 20.0,
    dim: int = 8,
    alpha: float = 0.8,
    beta: float = 3.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    compress: bool = False,
) -> dict[str, Any]:
    """Write LightGCN-style ``train.txt``/``test.txt`` (+ ``truth.json``) into ``out_dir``.

    Each line is ``user item item ...`` with 0-based ids; ``prepare --format implicit
    out_dir/train.txt out_dir/test.txt --split given`` reads them. ``compress=True`` writes
    ``.txt.gz`` files. Returns the truth dict.
    """
    if users < 1 or items < 2:
        raise BadInputError(f"need users >= 1 and items >= 2, got users={users}, items={items}")
    if not 0.0 <= test_fraction < 1.0:
        raise BadInputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 1.0 <= mean_items < float("inf"):  # also refuses nan
        raise BadInputError(f"--mean-items must be a number >= 1, got {mean_items}")
    out = Path(out_dir)
    check_writable_parent(out / "x")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10])
    p = rng.normal(0, 1 / np.sqrt(dim), size=(users, dim))
    q = rng.normal(0, 1 / np.sqrt(dim), size=(items, dim))
    item_perm = rng.permutation(items)  # popularity rank -> item id
    log_pop = np.empty(items)
    log_pop[item_perm] = -alpha * np.log(np.arange(1, items + 1, dtype=np.float64))
    n_u = np.clip(np.round(np.exp(rng.normal(np.log(mean_items), 0.6, size=users))), 2, items // 2 + 1).astype(np.int64)
    suffix = ".txt.gz" if compress else ".txt"
    n_train = n_test = 0
    batch = max(1, min(1024, 4_000_000 // items))  # users per batch: keeps [batch, items] ~ 32 MB
    with _atomic_binary(out / f"train{suffix}") as ftr, _atomic_binary(out / f"test{suffix}") as fte:
        for start in range(0, users, batch):
            b_rng = np.random.default_rng([seed, 11, start])
            stop = min(users, start + batch)
            # Gumbel-top-k = exact sampling without replacement from softmax(log pop + beta p.q)
            logits = log_pop[None, :] + beta * (p[start:stop] @ q.T) + b_rng.gumbel(size=(stop - start, items))
            k_max = int(n_u[start:stop].max())
            top = np.argpartition(-logits, k_max - 1, axis=1)[:, :k_max]
            tr_lines, te_lines = [], []
            for r, u in enumerate(range(start, stop)):
                k = int(n_u[u])
                row = top[r]
                chosen = row[np.argsort(-logits[r, row])[:k]]
                b_rng.shuffle(chosen)
                n_te = max(1, int(round(k * test_fraction))) if (k >= 2 and test_fraction > 0) else 0
                te, tr = chosen[:n_te], chosen[n_te:]
                tr_lines.append(" ".join(map(str, [u, *tr.tolist()])))
                if n_te:
                    te_lines.append(" ".join(map(str, [u, *te.tolist()])))
                n_train += tr.size
                n_test += te.size
            ftr.write(("\n".join(tr_lines) + "\n").encode())
            if te_lines:
                fte.write(("\n".join(te_lines) + "\n").encode())
    truth = {
        "kind": "topk",
        "generator": "ondevice.data.generate.generate_topk",
        "seed": seed,
        "users": users,
        "items": items,
        "latent_dim": dim,
        "popularity_alpha": alpha,
        "score_beta": beta,
        "form": "P(item) ∝ pop_i * exp(beta * p_u·q_i), sampled without replacement",
        "mean_items_per_user": mean_items,
        "test_fraction": test_fraction,
        "train_interactions": n_train,
        "test_interactions": n_test,
        "files": [f"train{suffix}", f"test{suffix}"],
    }
    atomic_write_json(out / "truth.json", truth)
    return truth


def synthetic_ctr_dataset(
    out_dir: str | os.PathLike,
    rows: int = 100_000,
    *,
    seed: int = 0,
    vocab: int | Sequence[int] | None = None,
    force: bool = False,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Generate Criteo-format data and ``prepare`` it into ``out_dir`` in one call.

    The raw TSV goes to a temp file that is removed afterwards; the truth is kept as
    ``out_dir/truth.json``. Returns the ``prepare.json`` content (with ``truth`` added).
    Used by the quickstart and by tests that need a real encoded dataset.
    """
    from ondevice.data.preparation import prepare

    out = Path(out_dir)
    check_writable_parent(out)
    with tempfile.TemporaryDirectory(prefix=".synthetic.", dir=out.resolve().parent) as tmp:
        raw = Path(tmp) / "synthetic.tsv"
        truth = generate_ctr(raw, rows, vocab=vocab, seed=seed, format="criteo", truth_path=Path(tmp) / "truth.json",
                             **generate_kwargs)
        info = prepare(raw, out, format="criteo", seed=seed, force=force)
        atomic_write_json(out / "truth.json", truth)
    info["truth"] = truth
    return info
