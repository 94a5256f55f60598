"""One minimum, itemised (issue 13 point 8).

``search optinter`` / ``search interactions`` / ``search features`` go through the fit loop of
``compress --method`` (same accountant, graph measured on the full model, ``--mlp`` forms), so
both state the same smallest model; every "too small" message lists the parts of the bytes it
names (``ByteAccountant.minimum_parts``), and they add up to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ondevice.data import EncodedDataset
from ondevice.errors import BudgetTooSmallError
from ondevice.pipeline.compress import compress
from ondevice.pipeline.fitting import search_fitting
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.search import SEARCHERS, make_searcher
from ondevice.search.byte_accountant import SHARED_PART, itemise_bytes
from ondevice.train import load_checkpoint
from tests.search.test_reproducible import FAST
from tests.topk_runs import pretrained_topk_run

CTR = sorted(n for n, c in SEARCHERS.items() if n not in ("auto", "deeplight") and "ctr" in c.tasks)
TOPK = sorted(n for n, c in SEARCHERS.items() if n != "auto" and "topk" in c.tasks)


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


def _assert_itemised(err: BudgetTooSmallError) -> dict[str, int]:
    parts = err.parts
    assert parts is not None and sum(parts.values()) == err.minimum_bytes, (parts, err.minimum_bytes)
    assert "other" not in parts and f"{err.minimum_bytes:,} B" in str(err)
    assert itemise_bytes(parts) in str(err) and "\n" not in str(err)
    names = list(parts)
    assert names[-2:] == ["ONNX graph", "format margin"]
    assert all(n >= 0 for k, n in parts.items() if k != SHARED_PART)
    return parts


def _minimum(run: Path, method: str, mlp: str) -> BudgetTooSmallError:
    ckpt = load_checkpoint(run)
    file_bytes, param_bytes = measure_file_bytes(ckpt.model)
    with pytest.raises(BudgetTooSmallError) as err:  # compress's fit loop, at 1 byte
        search_fitting(make_searcher(method, **FAST.get(method, {})), ckpt, _data(run), 1, file_bytes - param_bytes,
                        mlp=mlp)
    return err.value


@pytest.mark.parametrize("mlp", ["auto", "fp32"])
@pytest.mark.parametrize("method", CTR)
def test_every_ctr_too_small_message_itemises_its_minimum(trained_run: Path, method: str, mlp: str) -> None:
    parts = _assert_itemised(_minimum(trained_run, method, mlp))
    assert list(parts)[0].endswith(("embedding", "table")) or "embedding" in list(parts)[0]
    assert any(k.startswith("first-order table (") for k in parts)
    mlp_part = next(k for k in parts if k.startswith("MLP ("))
    assert ("int8" in mlp_part) if mlp == "auto" else ("fp32" in mlp_part)  # the tiny budget forces int8 under auto
    assert parts["format margin"] == 4096


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrained_topk_run(tmp_path_factory.mktemp("minimum_topk"), epochs=2)


@pytest.mark.parametrize("method", TOPK)
def test_every_topk_too_small_message_itemises_its_minimum(topk_run: Path, method: str) -> None:
    parts = _assert_itemised(_minimum(topk_run, method, "auto"))
    assert list(parts)[0].startswith(("item table", "smallest embedding", "embedding"))


def test_search_commands_and_compress_agree_on_the_minimum(trained_run: Path, tmp_path: Path) -> None:
    from ondevice.pipeline.search_runs import search_features, search_interactions
    from ondevice.search.interaction import AutoFISSearcher, OptInterSearcher

    def minimum(call, *args, **kwargs) -> BudgetTooSmallError:
        with pytest.raises(BudgetTooSmallError) as err:
            call(*args, **kwargs)
        _assert_itemised(err.value)
        return err.value

    for method, searcher, features in (("optinter", OptInterSearcher(epochs=1, search_epochs=1), False),
                                       ("autofis", AutoFISSearcher(epochs=1, search_epochs=1), False),
                                       ("autofield", None, True), ("adafs", None, True)):
        for mlp in ("auto", "fp32"):
            via_compress = minimum(compress, trained_run, budgets=["1KB"], methods=[method], mlp=mlp, epochs=1, inputs="ids",
                                   out_dir=tmp_path / "c", force=True, profile=False, plot=False, quiet=True,
                                   evaluate_test=False)
            if features:
                via_search = minimum(search_features, trained_run, tmp_path / "s", budget_bytes=1000, method=method,
                                     epochs=1, search_epochs=1, mlp=mlp)
            else:
                via_search = minimum(search_interactions, trained_run, tmp_path / "s", searcher, budget_bytes=1000,
                                     mlp=mlp)
            assert via_search.minimum_bytes == via_compress.minimum_bytes, (method, mlp)
            assert via_search.parts == via_compress.parts and str(via_search) == str(via_compress)
            assert not (tmp_path / "s").exists()  # (compress writes its summary of the failure)


def test_architecture_and_auto_itemise_theirs(trained_run: Path, tmp_path: Path) -> None:
    from ondevice.pipeline.search_runs import search_architecture

    with pytest.raises(BudgetTooSmallError, match="smallest architecture") as err:
        search_architecture(_data(trained_run).root, tmp_path / "a", budget_bytes=1000, epochs=1)
    parts = err.value.parts
    assert sum(parts.values()) == err.value.minimum_bytes and parts["format margin"] == 0  # measured, not estimated
    assert itemise_bytes(parts) in str(err.value) and "embedding" in parts

    with pytest.raises(BudgetTooSmallError, match="no method auto tried fits") as err:
        compress(trained_run, budgets=["1KB"], methods=["auto"], out_dir=tmp_path / "o", epochs=1, profile=False, inputs="ids",
                 plot=False, quiet=True, searcher_params={"auto": {"methods": ["uniform", "sseds", "int8"]}})
    _assert_itemised(err.value)
    assert err.value.minimum_bytes == _minimum(trained_run, "uniform", "auto").minimum_bytes  # the smallest of the three
