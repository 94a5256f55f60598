"""Every example script runs end to end on small generated data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_ctr_pipeline_example(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "ctr_pipeline.py"), "--out", str(tmp_path / "ex"),
                           "--rows", "8000", "--epochs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-int8:" in proc.stdout and "-uniform:" in proc.stdout
    assert (tmp_path / "ex" / "compressed" / "summary.md").is_file()


@pytest.mark.slow
def test_topk_rule_fleet_example(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "topk_rule_fleet.py"), "--out", str(tmp_path / "ex"),
                           "--users", "400", "--items", "1000", "--epochs", "2", "--rule-epochs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("-> pass") == 3 and "not measured on target arch" in proc.stdout
    assert (tmp_path / "ex" / "fleet" / "fleet.md").is_file()
