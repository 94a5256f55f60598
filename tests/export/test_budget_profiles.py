"""Budget parsing and device profiles (ondevice.budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondevice.budget import (
    PROFILE_DIR,
    DeviceProfile,
    list_profiles,
    load_profile,
    parse_budget,
    resolve_budget,
)
from ondevice.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "expected"), [
    ("2MB", 2_000_000), ("2MiB", 2_097_152), ("2mb", 2_000_000), ("2mib", 2_097_152), (" 2 MB ", 2_000_000),
    ("1.5MB", 1_500_000), ("1.1MB", 1_100_000), ("0.5KiB", 512), (".5KB", 500), ("512KiB", 524_288),
    ("750000B", 750_000), ("750000", 750_000), ("1KB", 1000), ("1kib", 1024), ("3GB", 3_000_000_000),
    ("1GiB", 1_073_741_824), ("1.0000001MB", 1_000_000), (2048, 2048),
])
def test_parse_budget(text: str | int, expected: int) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "2 M B", "2TB", "2mbit", "-1MB", "0MB", "0", "1e6", "2,000KB", "abc",
                                  "2MB2", "0.0001B"])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(BadInputError) as err:
        parse_budget(text)
    msg = str(err.value)
    assert "\n" not in msg
    assert "2MB" in msg or "at least 1 byte" in msg or "positive" in msg


def test_shipped_profiles_validate_and_match_repo_copies() -> None:
    names = list_profiles()
    assert {"android-low", "android-mid", "rpi4", "desktop"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.memory_budget > 0 and p.arch in ("arm64", "x86_64")
        assert p.runtime_format in ("onnx", "ort") and p.threads >= 1 and p.p99_latency_ms > 0
        # one source: the repository's budgets/ holds links to the packaged profiles
        assert (REPO / "budgets" / f"{name}.toml").resolve() == (PROFILE_DIR / f"{name}.toml").resolve()
    assert sorted(p.stem for p in (REPO / "budgets").glob("*.toml")) == names
    assert load_profile("rpi4").memory_budget == 16_000_000


def test_runner_has_one_source() -> None:
    from ondevice.export._runner import RUNNER_PATH

    # export/runner.py (what a device user copies) is a link to the packaged runner, not a copy
    assert (REPO / "export" / "runner.py").is_symlink()
    assert (REPO / "export" / "runner.py").resolve() == RUNNER_PATH.resolve()


def test_profile_by_path_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "phone.toml"
    good.write_text('name = "phone"\ndescription = "x"\nmemory_budget = "1.5MiB"\narch = "arm64"\nthreads = 1\n'
                    'batch_size = 1\np99_latency_ms = 4\nruntime_format = "ort"\n')
    p = load_profile(good)
    assert isinstance(p, DeviceProfile) and p.memory_budget == 1_572_864
    assert load_profile(str(good)) == p
    with pytest.raises(BadInputError, match="unknown device profile 'nope'; choose one of: .*rpi4"):
        load_profile("nope")
    with pytest.raises(BadInputError, match="not found"):
        load_profile("../../no/such/profile")
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('arch = "arm64"', 'arch = "mips"'))
    with pytest.raises(BadInputError, match="arch"):
        load_profile(bad)
    bad.write_text(good.read_text() + "colour = 1\n")
    with pytest.raises(BadInputError, match="unknown key"):
        load_profile(bad)
    bad.write_text(good.read_text().replace('name = "phone"', 'name = "../escape"'))
    with pytest.raises(BadInputError, match="must match"):
        load_profile(bad)
    bad.write_text("name = [")
    with pytest.raises(BadInputError, match="not valid TOML"):
        load_profile(bad)


def test_resolve_budget() -> None:
    rpi = load_profile("rpi4")
    assert resolve_budget(2_000_000, rpi, "--budget 2MB") == (2_000_000, "--budget 2MB")
    assert resolve_budget(17_000, None) == (17_000, "--budget 17000")
    with pytest.raises(BadInputError, match="must be an int number of bytes"):
        resolve_budget("2MB", rpi)  # type: ignore[arg-type]  # parsed once, by the caller
    with pytest.raises(BadInputError, match="budget must be positive"):
        resolve_budget(0, None)
    assert resolve_budget(None, rpi) == (16_000_000, "device profile rpi4")
    assert resolve_budget(None, None) == (None, None)
