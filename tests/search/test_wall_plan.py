"""``compress --time-limit`` covers the whole call (issue 13, point 4): ``ondevice.pipeline.wall_plan``."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np

from ondevice.evaluate import sample_users
from ondevice.pipeline.compress import compress
from ondevice.pipeline.wall_plan import MIN_SEARCH_SHARE, WallPlan


def test_search_limit_is_the_window_left_minus_the_reserves() -> None:
    now = time.monotonic()
    plan = WallPlan(60.0, now - 10.0, post_s=5.0, eval_s=3.0, full_eval_s=7.0)  # 10 s of the call already spent
    assert abs(plan.search_limit(0) - (60 - 10 - 5 - 3 - 7)) < 0.5  # the first window also pays the full model's test
    assert abs(plan.search_limit(1) - (120 - 10 - 5 - 3)) < 0.5  # windows are cumulative: time saved carries over
    late = WallPlan(60.0, now - 59.0, post_s=5.0)
    assert late.search_limit(0) == MIN_SEARCH_SHARE * 60  # a search always gets some time
    assert WallPlan(None, now).search_limit(3) is None


def test_estimate_scales_the_validation_pass_to_the_test_split() -> None:
    plan = WallPlan.estimate(100.0, started=0.0, export_s=1.0, val_s=4.0, val_size=1000, test_size=2500)
    assert plan.eval_s == plan.full_eval_s == 10.0 and plan.post_s == 7.0
    assert WallPlan.estimate(10.0, started=0.0, export_s=5.0, val_s=0, val_size=1, test_size=1).post_s == 2.5  # <= L/4


def test_user_sample_is_fixed_by_size_and_seed() -> None:
    pairs = np.asarray([(u, i) for u in range(1, 101) for i in range(3)])
    a, n = sample_users(pairs, 10, seed=0)
    b, _ = sample_users(pairs, 10, seed=0)
    assert n == 100 and np.array_equal(a, b) and len(np.unique(a[:, 0])) == 10 and len(a) == 30
    assert sample_users(pairs, 200)[0] is not None and len(sample_users(pairs, 200)[0]) == 300  # all when fewer


def test_the_whole_compress_call_holds_the_limit(trained_run: Path, tmp_path: Path) -> None:
    """A candidate that would train for minutes: load, full validation, search, export, verify,
    profile and test evaluation together stay within limit + 10 %."""
    limit = 8.0
    slow = {"uniform": {"batch_size": 64, "epochs": 500, "patience": 1000}}
    t0 = time.perf_counter()
    summary = compress(trained_run, budgets=["12KB"], methods=["auto"], out_dir=tmp_path / "o", time_limit_s=limit,
                       searcher_params={"auto": {"methods": ["uniform"], "candidate_params": slow}}, quiet=True,
                       profile_runs=5, plot=False)
    wall = time.perf_counter() - t0
    assert wall <= 1.1 * limit, wall
    assert summary["runs"][0]["candidates"][0].get("stopped_at_limit")
    assert summary["wall_plan"]["reserve_post_search_s"] > 0 and summary["runs"][0]["test_metric"] > 0.5


def test_topk_test_users_are_sampled_under_a_limit(tmp_path: Path, monkeypatch) -> None:
    from tests.topk_runs import pretrained_topk_run

    run = pretrained_topk_run(tmp_path / "t", epochs=1)
    # the module (ondevice.pipeline re-exports the function under the same name)
    monkeypatch.setattr(importlib.import_module("ondevice.pipeline.compress"), "TEST_MAX_USERS", 50)
    summary = compress(run, budgets=["40KB"], methods=["auto"], out_dir=tmp_path / "o", time_limit_s=60,
                       searcher_params={"auto": {"methods": ["int8"]}}, quiet=True, profile_runs=5, plot=False)
    full, art = summary["full_model"]["test"], summary["runs"][0]["test"]
    assert full["users"] == art["users"] == 50 and art["users_in_split"] > 50 and summary["test_users"]["sampled"] == 50
    assert "a seeded sample of 50 of" in (tmp_path / "o" / "summary.md").read_text()
    again = compress(run, budgets=["40KB"], methods=["auto"], out_dir=tmp_path / "o2", time_limit_s=60,
                     searcher_params={"auto": {"methods": ["int8"]}}, quiet=True, profile_runs=5, plot=False)
    assert again["runs"][0]["test_metric"] == summary["runs"][0]["test_metric"]  # same sample, same metric
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["wall_plan"]["limit_s"] == 60
