"""Byte budgets and device profiles.

A **budget** bounds the bytes of the exported model file on disk (``model.onnx``, and
``model.ort`` when one is written): ``2MB`` is 2,000,000 bytes (SI, 10^6) and ``2MiB`` is
2,097,152 bytes (IEC, 2^20). Units are case-insensitive (``2mb`` == ``2MB``), decimals are
allowed (``1.5MB`` == 1,500,000), and a bare number is bytes. Fractional bytes round down,
so a budget is never looser than what was typed.

A **device profile** (``budgets/*.toml``) names a device class: the memory budget for the
artefact, the CPU architecture, how many threads the app gives the model, the batch size at
which the p99 latency target applies, and the runtime format the device loads. Schema::

    name           = "rpi4"            # [a-z0-9][a-z0-9_-]*, also the file name (rpi4.toml)
    description    = "..."             # one line, free text
    memory_budget  = "16MB"            # parse_budget() syntax; bounds the model file's bytes
    arch           = "arm64"           # "arm64" or "x86_64"
    threads        = 4                 # onnxruntime intra-op threads on the device
    batch_size     = 256               # batch at which the latency target applies
    p99_latency_ms = 30.0              # p99 latency target at (batch_size, threads); > 0
    runtime_format = "onnx"            # "onnx" or "ort" (ORT-format model for mobile builds)
    emulated_cpu   = "cortex-a72"      # optional, arm64 only: qemu core for the arm64 parity check

Every key but ``emulated_cpu`` is required and unknown keys are an error. ``emulated_cpu``
names the ``qemu-aarch64 -cpu`` model whose kernel family matches the device's cores
(``compress --fleet`` checks arm64 parity on it; default ``neoverse-n1``). Profiles ship inside the package
(``ondevice/_resources/budgets``; ``budgets/*.toml`` at the repository root are links to them) and
are found by name (``load_profile("rpi4")``) or by path (``load_profile("my/dev.toml")``).
"""

from __future__ import annotations

import math
import re
import tomllib  # Python >= 3.11 (pyproject's requires-python)
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ondevice.errors import BadInputError

__all__ = [
    "CORE_FAMILIES",
    "PROFILE_DIR",
    "DeviceProfile",
    "format_bytes",
    "list_profiles",
    "load_profile",
    "parse_budget",
    "resolve_budget",
]

#: qemu ``-cpu`` names a profile's ``emulated_cpu`` may take, and the kernel family their HWCAPs select in
#: onnxruntime/numpy (data only: the arm64 parity check, ``ondevice.arm64.parity``, runs them).
CORE_FAMILIES: dict[str, str] = {
    "cortex-a53": "armv8.0 NEON, no dotprod",
    "cortex-a72": "armv8.0 NEON, no dotprod",
    "cortex-a55": "armv8.2 dotprod + fp16",
    "cortex-a76": "armv8.2 dotprod + fp16",
    "neoverse-n1": "armv8.2 dotprod + fp16",
    "a64fx": "armv8.2 SVE-512",
    "neoverse-v1": "armv8.4 SVE + i8mm + bf16",
    "cortex-a710": "armv9.0 SVE2 + i8mm + bf16",
    "neoverse-n2": "armv9.0 SVE2 + i8mm + bf16",
    "max": "every feature qemu emulates incl. SME (KleidiAI int8 path)",
}
#: Folder of the device profiles that ship with the package.
PROFILE_DIR = Path(__file__).resolve().parent / "_resources" / "budgets"

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_EXAMPLES = "2MB (2,000,000 bytes), 2MiB (2,097,152 bytes), 1.5MB, 512KiB, 750000B"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CPU_RE = re.compile(r"^[a-z0-9][a-z0-9-]*(,[a-z0-9-]+=[a-z0-9]+)*$")

Arch = Literal["arm64", "x86_64"]
RuntimeFormat = Literal["onnx", "ort"]


def parse_budget(text: str | int) -> int:
    """Parse a byte budget such as ``2MB`` or ``2MiB`` into an exact number of bytes.

    >>> parse_budget("2MB"), parse_budget("2MiB"), parse_budget(" 1.5 mb ")
    (2000000, 2097152, 1500000)

    Raises ``BadInputError`` (one line, with valid examples) for anything else,
    including zero, negative numbers and unknown units.
    """
    if isinstance(text, bool):
        raise BadInputError(f"budget {text!r} is not a size; use e.g. {_EXAMPLES}")
    if isinstance(text, int):
        if text <= 0:
            raise BadInputError(f"budget must be positive, got {text}; use e.g. {_EXAMPLES}")
        return text
    m = _BUDGET_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise BadInputError(f"budget {text!r} is not a size; use e.g. {_EXAMPLES}")
    number = m.group(1)
    # Exact decimal arithmetic: "1.1MB" must be 1,100,000, not 1,099,999.99.
    whole, _, frac = number.partition(".")
    scale = 10 ** len(frac)
    numerator = int(whole or "0") * scale + int(frac or "0")
    value = numerator * _UNITS[unit] // scale
    if value <= 0:
        raise BadInputError(f"budget {text!r} is {value} bytes; a budget must be at least 1 byte")
    return value


def format_bytes(n: int) -> str:
    """Human-readable size with the exact count: ``1,689,313 B (1.69 MB)``."""
    if n < 1000:
        return f"{n:,} B"
    exp = min(int(math.log10(n) // 3), 3)
    return f"{n:,} B ({n / 10 ** (3 * exp):.2f} {['B', 'kB', 'MB', 'GB'][exp]})"


@dataclass(frozen=True)
class DeviceProfile:
    """One device class (see the module docstring for the TOML schema)."""

    name: str
    description: str
    memory_budget: int
    arch: Arch
    threads: int
    batch_size: int
    p99_latency_ms: float
    runtime_format: RuntimeFormat
    emulated_cpu: str | None = None
    memory_budget_runtime: int | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "profile") -> DeviceProfile:
        """Validate a parsed TOML table; one-line ``BadInputError`` naming the key at fault."""
        fields = ("name", "description", "memory_budget", "arch", "threads", "batch_size",
                  "p99_latency_ms", "runtime_format")
        unknown = sorted(set(data) - set(fields) - {"source", "emulated_cpu", "memory_budget_runtime"})
        if unknown:
            raise BadInputError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
        missing = [k for k in fields if k not in data]
        if missing:
            raise BadInputError(f"{source}: missing key(s) {', '.join(missing)}; see budgets/README.md for the schema")
        name = data["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise BadInputError(f"{source}: name {name!r} must match [a-z0-9][a-z0-9_-]* (it names files and folders)")
        if not isinstance(data["description"], str):
            raise BadInputError(f"{source}: description must be a string")
        try:
            budget = parse_budget(data["memory_budget"])
        except BadInputError as err:
            raise BadInputError(f"{source}: memory_budget: {err}") from None
        if data["arch"] not in ("arm64", "x86_64"):
            raise BadInputError(f"{source}: arch {data['arch']!r} must be 'arm64' or 'x86_64'")
        for key in ("threads", "batch_size"):
            v = data[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BadInputError(f"{source}: {key} must be an integer >= 1, got {v!r}")
        lat = data["p99_latency_ms"]
        if not isinstance(lat, (int, float)) or isinstance(lat, bool) or not lat > 0 or not math.isfinite(lat):
            raise BadInputError(f"{source}: p99_latency_ms must be a number > 0, got {lat!r}")
        if data["runtime_format"] not in ("onnx", "ort"):
            raise BadInputError(f"{source}: runtime_format {data['runtime_format']!r} must be 'onnx' or 'ort'")
        cpu = data.get("emulated_cpu")
        if cpu is not None and (not isinstance(cpu, str) or not _CPU_RE.match(cpu) or data["arch"] != "arm64"):
            raise BadInputError(f"{source}: emulated_cpu {cpu!r} must be a qemu-aarch64 -cpu name such as 'cortex-a53', "
                                "and only on arm64 profiles")
        if cpu is not None and cpu.split(",", 1)[0] not in CORE_FAMILIES:
            raise BadInputError(f"{source}: emulated_cpu {cpu!r} is not a core ondevice knows; choose from "
                                f"{', '.join(CORE_FAMILIES)}")
        runtime = data.get("memory_budget_runtime")
        if runtime is not None:
            try:
                runtime = parse_budget(runtime)
            except BadInputError as err:
                raise BadInputError(f"{source}: memory_budget_runtime: {err}") from None
        return cls(name=name, description=data["description"], memory_budget=budget, arch=data["arch"],
                   threads=data["threads"], batch_size=data["batch_size"], p99_latency_ms=float(lat),
                   runtime_format=data["runtime_format"], emulated_cpu=cpu, memory_budget_runtime=runtime, source=source)


def list_profiles() -> list[str]:
    """Names of the device profiles shipped with the package, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a device profile by shipped name (``rpi4``) or by path to a ``.toml`` file.

    A bare name is looked up only inside the shipped profile folder, so it can never reach
    another file; anything with a path separator or a ``.toml`` suffix is read as a path.
    """
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(".toml")
    if is_path:
        path = Path(text)
        if not path.is_file():
            raise BadInputError(f"device profile file not found: {path}; shipped profiles: {', '.join(list_profiles())}")
    else:
        if not _NAME_RE.match(text) or not (PROFILE_DIR / f"{text}.toml").is_file():
            raise BadInputError(
                f"unknown device profile {text!r}; choose one of: {', '.join(list_profiles())} (or pass a .toml path)"
            )
        path = PROFILE_DIR / f"{text}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"device profile {path} is not valid TOML ({err}); fix the file") from None
    profile = DeviceProfile.from_dict(data, source=str(path))
    if not is_path and profile.name != text:
        raise BadInputError(f"{path}: name {profile.name!r} differs from the file name {text!r}; make them equal")
    return profile


def resolve_budget(budget_bytes: int | None, profile: DeviceProfile | None,
                   source: str | None = None) -> tuple[int | None, str | None]:
    """The byte budget that applies and where it came from.

    ``budget_bytes``: an explicit budget, already parsed (:func:`parse_budget`, once, where the
    user's text came in); it wins over the profile's ``memory_budget``. ``source``: how the user
    gave it (``"--budget 2MB"``; default ``"--budget <bytes>"``). Returns
    ``(bytes or None, "--budget 2MB" / "device profile rpi4" / None)``.
    """
    if budget_bytes is not None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
            raise BadInputError(f"budget_bytes must be an int number of bytes (parse_budget reads '2MB'), got {budget_bytes!r}")
        if budget_bytes <= 0:
            raise BadInputError(f"budget must be positive, got {budget_bytes}; use e.g. {_EXAMPLES}")
        return budget_bytes, source or f"--budget {budget_bytes}"
    if profile is not None:
        return profile.memory_budget, f"device profile {profile.name}"
    return None, None
