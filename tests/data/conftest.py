"""Fixtures for the data tests: tiny raw files in every format, written inline."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def criteo_line(label: object, ints: list[object], cats: list[str]) -> str:
    return "\t".join([str(label), *[str(i) for i in ints], *cats])


def write_criteo(path: Path, rows: int, *, seed: int = 0, gz: bool = False) -> Path:
    """Criteo-format rows with a few repeated values per column (deterministic)."""
    lines = []
    for r in range(rows):
        ints = [("" if (r + j) % 7 == 0 else (r * (j + 1)) % 40 - 1) for j in range(13)]
        cats = [("" if (r + j) % 11 == 0 else f"{((r * 31 + seed) % (j + 3)) + j * 100:08x}") for j in range(26)]
        lines.append(criteo_line(r % 3 == 0 and 1 or 0, ints, cats))
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def criteo_file(tmp_path: Path) -> Path:
    return write_criteo(tmp_path / "criteo.tsv", 300)


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (../shared/data is only on the dev machines)")
    return path
