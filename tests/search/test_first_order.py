"""The shared ``first_order`` option of the retraining CTR searchers (keep | fp16 | drop | auto)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ondevice.data import EncodedDataset
from ondevice.embedding import QuantizedEmbedding
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.export import export_artefact, verify_artefact
from ondevice.search import ByteAccountant, make_searcher
from ondevice.train import Checkpoint, load_checkpoint

SEARCH_KW = {"batch_size": 256}


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


def _minimum(run: Path, method: str, form: str) -> int:
    with pytest.raises(BudgetTooSmallError) as err:
        make_searcher(method, epochs=0, first_order=form).search(run, _data(run), 1_000)
    return err.value.minimum_bytes


@pytest.mark.parametrize("method", ["sseds", "mde", "uniform", "hash", "pep", "uniform+int8", "sseds+fp16"])
def test_option_is_a_param_and_defaults_to_auto(method: str) -> None:
    s = make_searcher(method, first_order="drop")
    assert s.get_params()["first_order"] == "drop" and s.clone().first_order == "drop"
    assert make_searcher(method).get_params()["first_order"] == "auto"


def test_accountant_counts_the_chosen_form(trained_run: Path) -> None:
    model = load_checkpoint(trained_run).model
    keep, fp16, drop = (ByteAccountant(first_order=f) for f in ("keep", "fp16", "drop"))
    fp16_bytes = QuantizedEmbedding.expected_bytes(model.linear.vocab_sizes, 1, "float16")
    assert keep.fixed_parts(model)["linear"] == model.linear.storage_bytes()
    assert fp16.fixed_parts(model)["linear"] == fp16_bytes
    assert "linear" not in drop.fixed_parts(model)
    assert keep.fixed_bytes(model) - fp16.fixed_bytes(model) == model.linear.storage_bytes() - fp16_bytes
    assert keep.fixed_bytes(model) - drop.fixed_bytes(model) == model.linear.storage_bytes()


@pytest.mark.parametrize("expect", ["fp16", "drop"])
def test_auto_falls_back_and_the_artefact_fits(trained_run: Path, tmp_path: Path, expect: str) -> None:
    keep_min, fp16_min, drop_min = (_minimum(trained_run, "uniform", f) for f in ("keep", "fp16", "drop"))
    assert drop_min < fp16_min < keep_min
    budget = (fp16_min + keep_min) // 2 if expect == "fp16" else (drop_min + fp16_min) // 2
    data, ckpt = _data(trained_run), load_checkpoint(trained_run)

    with pytest.raises(BudgetTooSmallError, match="first-order table"):  # keep alone does not fit
        make_searcher("uniform", epochs=1, first_order="keep", **SEARCH_KW).search(ckpt, data, budget)

    result = make_searcher("uniform", epochs=1, **SEARCH_KW).search(ckpt, data, budget)
    rec = result.trace[-1]
    assert rec["first_order"] == expect and rec["option"] == "auto" and rec["tried"][0]["first_order"] == "keep"
    assert result.config["_data"]["first_order"] == expect and result.params["first_order"] == "auto"
    if expect == "fp16":
        assert isinstance(result.model.linear, QuantizedEmbedding) and result.model.linear.dtype_name == "float16"
        assert rec["first_order_bytes"] == result.model.linear.storage_bytes()
    else:
        assert result.model.linear is None and rec["first_order_bytes"] == 0
    assert result.bytes_estimate <= budget

    out = Checkpoint(model=result.model, schema=ckpt.schema, train_config=ckpt.train_config)
    manifest = export_artefact(out, tmp_path / "art", budget_bytes=budget)
    assert manifest["budget"]["fits"] and manifest["files"]["model.onnx"]["bytes"] <= budget
    assert verify_artefact(tmp_path / "art", seed=0)["passed"]  # raises ParityError on a miss


@pytest.mark.parametrize("method", ["sseds", "mde", "hash", "pep"])
def test_auto_error_reflects_the_smallest_option(trained_run: Path, method: str) -> None:
    keep_min, drop_min = _minimum(trained_run, method, "keep"), _minimum(trained_run, method, "drop")
    assert drop_min < keep_min
    with pytest.raises(BudgetTooSmallError, match=r"first-order table \(dropped\) 0 B") as err:
        make_searcher(method, epochs=0).search(trained_run, _data(trained_run), 1_000)
    assert err.value.minimum_bytes == drop_min


def test_unknown_option_is_refused(trained_run: Path) -> None:
    with pytest.raises(BadInputError, match="first_order must be one of"):
        make_searcher("uniform", epochs=0, first_order="int4").search(trained_run, _data(trained_run), 100_000)
