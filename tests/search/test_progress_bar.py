"""The TTY progress bar inside long searches (issue 13, point 4): ``ondevice.train.progress``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import ondevice.pipeline  # noqa: F401 - registers the auto method
from ondevice.data import EncodedDataset
from ondevice.search import make_searcher
from ondevice.train import load_checkpoint
from ondevice.train.progress import progress_bar, tick

FAST = {"uniform": {"batch_size": 64}}


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _data(run: Path) -> EncodedDataset:
    return EncodedDataset(json.loads((run / "train.json").read_text())["data_dir"])


def test_bar_redraws_one_line_on_a_tty_and_is_erased_at_the_end() -> None:
    tty = FakeTTY()
    with progress_bar("auto uniform", stream=tty, min_interval_s=0.0, time_left=lambda: 41.2):
        tick(1, 4, 10)
        tick(3, 4, 1200)
    out = tty.getvalue()
    assert out.count("\r\x1b[K") == 3 and "\n" not in out  # two draws and the final erase, all on one line
    assert "epoch 3/4  step 1,200" in out and "[##########..........]" in out and "(41 s left)" in out
    assert out.endswith("\r\x1b[K")


def test_bar_is_silent_on_a_pipe_when_quiet_and_without_an_open_bar() -> None:
    pipe, tty = io.StringIO(), FakeTTY()
    with progress_bar("x", stream=pipe, min_interval_s=0.0):
        tick(1, 2, 5)
    with progress_bar("x", stream=tty, enabled=False, min_interval_s=0.0):  # --quiet
        tick(1, 2, 5)
    tick(1, 2, 5)  # no bar open: nothing happens
    assert pipe.getvalue() == "" and tty.getvalue() == ""


def test_auto_draws_the_bar_while_a_candidate_trains_on_a_tty(trained_run: Path, monkeypatch) -> None:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    searcher = make_searcher("auto", methods=["uniform"], epochs=2, candidate_params=FAST, progress=True)
    searcher.search(load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")
    out = tty.getvalue()
    lines = out.split("\n")
    assert "auto uniform  [" in out and "epoch 1/2" in out  # the bar, drawn by the training loop's ticks
    assert lines[0].startswith("  auto uniform: start at")
    finish = next(ln for ln in lines if "fits at" in ln or "val auc" in ln)
    assert finish.startswith("\r\x1b[K") or finish.startswith("  auto uniform:")  # the bar was erased first

    quiet = FakeTTY()
    monkeypatch.setattr(sys, "stderr", quiet)
    make_searcher("auto", methods=["uniform"], epochs=1, candidate_params=FAST, progress=False).search(
        load_checkpoint(trained_run), _data(trained_run), 12_000, mlp="auto")
    assert quiet.getvalue() == ""
