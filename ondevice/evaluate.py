"""``evaluate``: the shipped file's quality on a data split, through onnxruntime.

What an app gets is ``model.onnx``, not the PyTorch model that produced it, so this reads
the artefact folder only (plus, for top-K, the server-side user table that
``reference_model.pt`` keeps) and runs the file with onnxruntime:

* CTR: the test ids (the artefact's own fields: a feature-selected artefact takes only its
  kept columns, by name) through the graph in batches -> AUC and logloss of the
  ``probability`` output (``train.metrics``: global, float64); a raw-feature artefact through
  its id model (the graph after its encoder, ``export.raw.id_model``).
* Top-K (BPR-MF): the graph's item scores ``[B, N-1]`` (the input of its final ``TopK``
  node, added as an extra output of an in-memory copy: same tables, same arithmetic) for
  each evaluated user's vector; the items the user met in training (and in validation when
  the split is ``test``) and the OOV row are excluded, then Recall@K / NDCG@K with the
  artefact's K over full ranking — the trainer's protocol (``train.evaluate.evaluate_topk``).

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


def evaluate_artefact(artefact: str | Path, data: str | Path | EncodedDataset, *, split: str = "test",
                      threads: int = 1) -> dict[str, Any]:
    """Metrics of ``artefact/model.onnx`` on ``split`` of ``data`` (module docstring)."""
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
        out.update(_evaluate_topk(folder, model_path, manifest, ds, split, threads))
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
    probs = np.empty(len(s), dtype=np.float32)
    for start in range(0, len(s), BATCH):
        ids = np.asarray(s.ids[start:start + BATCH], dtype=np.int64)[:, cols]
        probs[start:start + len(ids)] = sess.run(None, {in_name: ids})[0].reshape(-1)
    labels = np.asarray(s.labels)
    return {"metric": "auc", "auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs), "rows": int(len(s))}


def _scores_model(model_path: Path) -> bytes:
    """The artefact's graph with the input of its last ``TopK`` node (all item scores) as an extra output."""
    import onnx

    model = onnx.load(str(model_path))
    topk = [n for n in model.graph.node if n.op_type == "TopK"]
    if not topk:
        raise ArtefactError(f"{model_path} has no TopK node; it is not a top-K artefact")
    scores = topk[-1].input[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(scores, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()


def _evaluate_topk(folder: Path, model_path: Path, manifest: dict[str, Any], ds: EncodedDataset, split: str,
                   threads: int) -> dict[str, Any]:
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
    ev_ptr, ev_items = user_item_csr(ds.split(split).ids, n_users)
    ex = [user_item_csr(ds.split(name).ids, n_users) for name in excluded]
    users = np.flatnonzero(np.diff(ev_ptr) > 0)
    if len(users) == 0:
        raise BadInputError(f"the {split} split of {ds.root} has no interactions")
    sess = _session(_scores_model(model_path), threads)
    in_name = manifest["inputs"][0]["name"]
    top_all, relevant = [], []
    for start in range(0, len(users), 1024):
        batch = users[start:start + 1024]
        scores = sess.run(None, {in_name: user_table[batch].astype(np.float32)})[-1]  # [B, N-1]: items 1..N-1
        scores = np.asarray(scores, dtype=np.float64)
        for r, user in enumerate(batch):
            for ptr, items in ex:
                seen = items[ptr[user]:ptr[user + 1]]
                scores[r, seen[seen >= 1] - 1] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k] + 1
        top_all.extend(top)
        relevant.extend(ev_items[ev_ptr[u]:ev_ptr[u + 1]] for u in batch)
    recall, ndcg = recall_ndcg_at_k(np.asarray(top_all), relevant, k)
    return {"metric": f"recall@{k}", f"recall@{k}": recall, f"ndcg@{k}": ndcg, "users": int(len(users)),
            "excluded_splits": excluded}
