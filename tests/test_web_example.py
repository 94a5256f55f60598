"""examples/web in a real browser (issue 16): headless Chromium runs the page with onnxruntime-web
on raw-feature artefacts; its golden outputs and its predictions for raw records (unseen values,
empty strings, NaN, huge numbers, a hashed field) match onnxruntime in Python within 1e-5.

Skipped, with the reason, when Chromium (``apt-get install chromium``), node/npm or the npm
package (no registry access) is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ondevice.data.dataset import EncodedDataset
from ondevice.export import export_artefact
from ondevice.models import build_model
from ondevice.train.checkpoint import save_checkpoint
from tests.export.test_raw_inputs import _criteo_rows, _odd_criteo_lines, _prepare

ROOT = Path(__file__).resolve().parents[1]


def _check_module():
    spec = importlib.util.spec_from_file_location("web_check", ROOT / "examples" / "web" / "check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def web():
    mod = _check_module()
    if mod.browser() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed")
    try:
        mod.node_modules()
    except (FileNotFoundError, OSError) as err:
        pytest.skip(f"onnxruntime-web is unavailable: {err}")
    return mod


def _artefact(tmp: Path, data: Path) -> Path:
    schema = EncodedDataset(data).schema
    torch.manual_seed(0)
    model = build_model("deepfm", schema.vocab_sizes, embed_dim=4, mlp_dims=[16])
    with torch.no_grad():
        model.linear.weight.normal_(std=0.5)
    (tmp / "run").mkdir()
    save_checkpoint(tmp / "run" / "model.pt", model, schema, metrics={})
    export_artefact(tmp / "run" / "model.pt", tmp / "art", inputs="raw", check_mobile=False)
    return tmp / "art"


def test_browser_criteo_raw(tmp_path: Path, web) -> None:
    lines = _odd_criteo_lines(np.random.default_rng(7), 60)
    (tmp_path / "c.tsv").write_text("".join(lines))
    art = _artefact(tmp_path, _prepare(tmp_path / "c.tsv", tmp_path / "data", "criteo"))
    records = _criteo_rows(lines)[:30] + [{"I1": "inf", "I2": "1e300", "C1": "never seen"}, {}]
    result = web.check(art, records)
    assert result["golden_passed"] and result["golden_max_abs_diff"] <= 1e-5
    assert result["records"] == 32 and result["records_max_abs_diff"] <= 1e-5
    assert result["load_ms"] > 0 and result["onnxruntime_web"] == json.loads((ROOT / "examples/web/package.json").read_text())[
        "dependencies"]["onnxruntime-web"]


def test_browser_hashed_field(tmp_path: Path, web) -> None:
    rows = ["click,site,dev,price"] + [f"{k % 2},s{k % 5},d{k % 11},{k % 17}" for k in range(60)]
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    spec = {"label": "click", "categorical": ["site", "dev"], "numeric": {"price": "log2"}, "hash_buckets": {"dev": 7}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    art = _artefact(tmp_path, _prepare(tmp_path / "h.csv", tmp_path / "data", "csv",
                                       format_options={"spec": str(tmp_path / "spec.json")}))
    records = [dict(zip(["click", "site", "dev", "price"], r.split(","), strict=True)) for r in rows[1:]]
    result = web.check(art, records + [{"site": "s99", "dev": "d999", "price": ""}])
    assert result["golden_passed"] and result["records_max_abs_diff"] <= 1e-5
