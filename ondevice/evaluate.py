"""``evaluate``: the shipped file's quality on a data split, through onnxruntime.

What an app gets is ``model.onnx``, not the PyTorch model that produced it, so this reads
the artefact folder only (plus, for top-K, the server-side user table that
``reference_model.pt`` keeps) and runs the file with onnxruntime:

* CTR: the test ids (the artefact's own fields: a feature-selected artefact takes only its
  kept columns, by name) through the graph in batches -> AUC and logloss of the
  ``probability`` output (``train.metrics``: global, float64); a raw-feature artefact through
  its id model (the graph after its encoder, ``export.raw.id_model``).
* Top-K (BPR-MF): each evaluated user's vector (row of the server-side user table) and the
  items the user met in training (and in validation when the split is ``test``), ``-1``-padded,
  go through the artefact's own ``exclude_items`` input, so the shipped graph does the
  exclusion and the ranking over all items; its ``item_ids`` output gives Recall@K / NDCG@K
  with the artefact's K — the trainer's protocol (``train.evaluate.evaluate_topk``).

``compress`` calls this once per chosen artefact after every choice was made on the
validation split, so the test metric never influences a choice ("read once").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.data import EncodedDataset
from ondevice.errors import ArtefactError, BadInputError
from ondevice.train.metrics import log_loss, recall_ndcg_at_k, roc_auc, user_item_csr

__all__ = ["evaluate_artefact"]

BATCH = 4096
TOPK_BATCH = 256  # users per top-K call: [256, N] scores stay a few MB even at 10^5 items


def _session(model: bytes | str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise ArtefactError(f"{folder} has no manifest.json; pass an artefact folder written by `ondevice export`/`compress`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtefactError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); re-export the artefact") from None


def sample_users(pairs: np.ndarray, max_users: int | None, seed: int = 0) -> tuple[np.ndarray, int]:
    """The ``(user, item)`` rows of ``pairs`` whose user is in a seeded sample of ``max_users`` of its
    users (every row when there are not more), and how many users ``pairs`` has.

    A fixed size and seed, not a time-dependent one, so the same command reports the same metric.
    """
    pairs = np.asarray(pairs, dtype=np.int64)
    users = np.unique(pairs[:, 0])
    if max_users is None or len(users) <= max_users:
        return pairs, int(len(users))
    if max_users < 1:
        raise BadInputError(f"max_users must be >= 1, got {max_users}")
    keep = np.random.default_rng(seed).choice(users, size=int(max_users), replace=False)
    return pairs[np.isin(pairs[:, 0], keep)], int(len(users))


def evaluate_artefact(artefact: str | Path, data: str | Path | EncodedDataset, *, split: str = "test",
                      threads: int = 1, max_users: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics of ``artefact/model.onnx`` on ``split`` of ``data`` (module docstring).

    ``max_users`` (top-K): evaluate a seeded sample of that many of the split's users
    (:func:`sample_users`; ``users`` and ``users_in_split`` in the result say so).
    """
    folder = Path(artefact)
    manifest = _manifest(folder)
    model_path = folder / "model.onnx"
    if not model_path.is_file():
        raise ArtefactError(f"{folder} has no model.onnx; re-export the artefact")
    ds = data if isinstance(data, EncodedDataset) else EncodedDataset(data)
    if ds.task != manifest.get("task"):
        raise BadInputError(f"{ds.root} is a {ds.task} dataset but the artefact is a {manifest.get('task')} model")
    out: dict[str, Any] = {"artefact": str(folder), "data": str(ds.root), "split": split, "runtime": "onnxruntime",
                           "model_file": "model.onnx"}
    if manifest["task"] == "ctr":
        out.update(_evaluate_ctr(model_path, manifest, ds, split, threads))
    else:
        out.update(_evaluate_topk(folder, model_path, manifest, ds, split, threads, max_users, seed))
    return out


def _evaluate_ctr(model_path: Path, manifest: dict[str, Any], ds: EncodedDataset, split: str,
                  threads: int) -> dict[str, Any]:
    names = [f["name"] for f in manifest["schema"]["fields"]]
    cols = ds.schema.field_positions(names)  # a feature-selected artefact reads its kept fields only
    vocab = [int(f["vocab_size"]) for f in manifest["schema"]["fields"]]
    if [ds.schema.fields[c].vocab_size for c in cols] != vocab:
        raise BadInputError(f"{ds.root} encodes the artefact's fields with other vocabularies; "
                            "pass the data the artefact's model was trained on")
    s = ds.split(split)
    if manifest.get("raw_inputs"):  # raw artefact: its id model (the graph after the encoder) takes the encoded split
        import onnx

        from ondevice.export.raw import id_model

        sess, in_name = _session(id_model(onnx.load(str(model_path))).SerializeToString(), threads), "ids"
    else:
        sess, in_name = _session(str(model_path), threads), manifest["inputs"][0]["name"]
    relabel = _id_relabel(model_path.parent, manifest)
    probs = np.empty(len(s), dtype=np.float32)
    for start in range(0, len(s), BATCH):
        ids = np.asarray(s.ids[start:start + BATCH], dtype=np.int64)[:, cols]
        if relabel is not None:
            ids = np.stack([r[ids[:, j]] for j, r in enumerate(relabel)], axis=1)
        probs[start:start + len(ids)] = sess.run(None, {in_name: ids})[0].reshape(-1)
    labels = np.asarray(s.labels)
    return {"metric": "auc", "auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs), "rows": int(len(s))}


def _id_relabel(folder: Path, manifest: dict[str, Any]) -> list[np.ndarray] | None:
    """Per field, prepare's id -> the id model's, for a raw artefact whose id model holds only the
    kept rows of its row-pruned tables (``export.onnx_export.RELABEL_KEY``); None otherwise."""
    from ondevice.export.onnx_export import RELABEL_KEY

    if not (manifest.get("raw_inputs") or {}).get(RELABEL_KEY):
        return None
    from ondevice.embedding.row_pruned import compact_rows
    from ondevice.train.checkpoint import load_checkpoint

    ref = folder / "reference_model.pt"
    compact = compact_rows(load_checkpoint(ref).model) if ref.is_file() else None
    if compact is None:
        raise ArtefactError(f"{folder}: its id model takes re-indexed ids but reference_model.pt has no row-pruned "
                            "tables to re-index with; re-export the artefact")
    return [r.numpy().astype(np.int64) for r in compact[1]]


def _evaluate_topk(folder: Path, model_path: Path, manifest: dict[str, Any], ds: EncodedDataset, split: str,
                   threads: int, max_users: int | None = None, seed: int = 0) -> dict[str, Any]:
    from ondevice.train.checkpoint import load_checkpoint

    ref = folder / "reference_model.pt"
    if not ref.is_file():
        raise ArtefactError(f"{folder} has no reference_model.pt (the server-side user table); re-export the artefact")
    model = load_checkpoint(ref).model
    with __import__("torch").no_grad():
        user_table = model.user_embedding.dense_weight().numpy()  # type: ignore[union-attr]
    k = int(manifest["topk"]["k"])
    n_users = user_table.shape[0]
    excluded = ["train"] + (["val"] if split == "test" and ds.has_split("val") else [])
    pairs, in_split = sample_users(ds.split(split).ids, max_users, seed)
    ev_ptr, ev_items = user_item_csr(pairs, n_users)
    ex = [user_item_csr(ds.split(name).ids, n_users) for name in excluded]
    users = np.flatnonzero(np.diff(ev_ptr) > 0)
    if len(users) == 0:
        raise BadInputError(f"the {split} split of {ds.root} has no interactions")
    exclude = (manifest.get("topk") or {}).get("exclude_input")
    if not exclude:
        raise ArtefactError(f"{folder} is a top-K artefact without an exclude_items input (exported before it existed); "
                            "re-export it")
    sess = _session(str(model_path), threads)
    in_name = manifest["inputs"][0]["name"]
    ids_name = manifest["topk"]["ids_output"]
    top_all, relevant = [], []
    for start in range(0, len(users), TOPK_BATCH):
        batch = users[start:start + TOPK_BATCH]
        seen = [np.concatenate([items[ptr[u]:ptr[u + 1]] for ptr, items in ex]) for u in batch]
        padded = np.full((len(batch), max(len(v) for v in seen)), -1, dtype=np.int64)
        for r, v in enumerate(seen):
            padded[r, :len(v)] = v
        feeds = {in_name: user_table[batch].astype(np.float32), exclude: padded}
        top_all.extend(sess.run([ids_name], feeds)[0])
        relevant.extend(ev_items[ev_ptr[u]:ev_ptr[u + 1]] for u in batch)
    recall, ndcg = recall_ndcg_at_k(np.asarray(top_all), relevant, k)
    return {"metric": f"recall@{k}", f"recall@{k}": recall, f"ndcg@{k}": ndcg, "users": int(len(users)),
            "users_in_split": in_split, "user_sample_seed": seed if len(users) < in_split else None,
            "excluded_splits": excluded}
