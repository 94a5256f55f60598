"""``arm64_parity``: the artefact's outputs on emulated ARM cores against the x86 outputs.

For each core, one ``qemu-aarch64 -cpu CORE`` process runs the torch-free device runner in
parity mode (``runner.py --parity-inputs``) with the official aarch64 onnxruntime wheel and
the same session options as the host (1 intra-op thread, ``ORT_ENABLE_ALL``). The inputs are
the manifest's golden inputs plus fresh ones (batches 1, 7 and 256 with OOV and negative ids;
for CTR also a batch of nothing but out-of-range ids). The host computes the x86 outputs with
the same runner session, and both are compared in float64 (never bit-equality: a wider SIMD
width changes the summation order by an ulp).

Tolerance (``parity_tolerance``): the manifest's own bound, i.e. 1e-5 for fp32 storage and the
documented quantized-storage bound (5e-5) otherwise; top-K scores scale it by max |score|
as at export, and top-K ids must agree at every position up to tied scores.

Which kernels run is decided by the emulated core's HWCAPs, so the default cores cover the
families that differ: ``cortex-a53`` (v8.0 NEON, no dotprod), ``neoverse-n1`` (v8.2 dotprod,
fp16), ``neoverse-n2`` (v9 SVE2, i8mm, bf16) and ``max`` (everything qemu has, SME included).
On SME cores onnxruntime >= 1.2x sends int8 MatMuls (``DynamicQuantizeMatMul`` /
``MatMulIntegerToFloat``) to KleidiAI kernels, whose int8 numerics differ from x86 by ~1e-4;
the session config entry ``mlas.disable_kleidiai=1`` removes that path. On SME cores a second
session with that entry runs in the same process and both results are reported.

Wall seconds under emulation are recorded to size CI budgets only: they are not device latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.arm64.setup import Arm64Env, find_env, stamp_is_current, wanted_versions
from ondevice.budget import CORE_FAMILIES
from ondevice.errors import ArtefactError, BadInputError
from ondevice.export._runner import RUNNER_PATH, runner_module
from ondevice.io import atomic_write_json

__all__ = ["CORE_FAMILIES", "DEFAULT_CORES", "KLEIDIAI_OFF", "arm64_parity", "compare_core", "parity_inputs",
           "parity_tolerance"]

DEFAULT_CORES = ("cortex-a53", "neoverse-n1", "neoverse-n2", "max")
#: Session config entry that keeps onnxruntime's int8 MatMuls off the KleidiAI (SME) kernels.
KLEIDIAI_OFF = {"mlas.disable_kleidiai": "1"}
#: Ops onnxruntime may route to KleidiAI on SME cores (as written or after its fusions).
KLEIDIAI_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                "QLinearMatMul", "QGemm", "ConvInteger", "MatMulNBits"}
FRESH_BATCHES = (1, 7, 256)
CORE_TIMEOUT_S = 600


def _core_base(core: str) -> str:
    return core.split(",", 1)[0]


def core_has_sme(core: str) -> bool:
    """``max`` exposes SME unless ``sme=off`` is given (qemu 10 has no other SME core model)."""
    return _core_base(core) == "max" and "sme=off" not in core.replace(" ", "")


def check_cores(cores: list[str] | tuple[str, ...] | None) -> list[str]:
    """The cores to emulate (default ``DEFAULT_CORES``); one-line error for an unknown name."""
    cores = list(cores) if cores else list(DEFAULT_CORES)
    for core in cores:
        if _core_base(core) not in CORE_FAMILIES:
            raise BadInputError(f"unknown emulated core {core!r}; choose from {', '.join(CORE_FAMILIES)} "
                                f"(qemu properties allowed, e.g. max,sme=off)")
    if len(set(cores)) != len(cores):
        raise BadInputError(f"--cpu repeats a core: {', '.join(cores)}")
    return cores


def parity_tolerance(manifest: dict[str, Any]) -> tuple[float, str]:
    """(absolute bound, storage kind): the manifest's tolerance (1e-5 fp32, 5e-5 quantized storage)."""
    tol = manifest.get("tolerance") or {}
    if "atol" not in tol:
        raise ArtefactError("manifest.json has no tolerance; re-export the artefact")
    return float(tol["atol"]), str(tol.get("storage", "fp32"))


def parity_inputs(manifest: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Golden inputs plus fresh batches 1, 7, 256 (OOV/negative ids); CTR adds an all-OOV batch."""
    runner = runner_module()
    in_name = manifest["inputs"][0]["name"]
    cases = {f"golden_{c['name']}": runner.decode_array(c["inputs"][in_name]) for c in manifest["golden"]}
    for b in FRESH_BATCHES:
        cases[f"fresh_b{b}"] = runner.make_inputs(manifest, b, seed + b)[in_name]
    if manifest["task"] == "ctr":
        cases["fresh_all_oov_b7"] = runner.make_inputs(manifest, 7, seed, oov_fraction=1.0)[in_name]
    return cases


def compare_core(manifest: dict[str, Any], got: dict[str, dict[str, np.ndarray]],
                 expected: dict[str, dict[str, np.ndarray]], atol: float) -> dict[str, Any]:
    """Max |arm - x86| per output over every case (float64), the worst case and pass/fail.

    ``got``/``expected`` map case -> output name -> array. Top-K ids count the fraction of
    positions that neither agree nor tie (must be 0); every other output must be <= ``atol``.
    """
    runner = runner_module()
    ids_name = (manifest.get("topk") or {}).get("ids_output")
    worst: dict[str, float] = {}
    worst_case: dict[str, str] = {}
    for case, exp in expected.items():
        if case not in got:
            raise ArtefactError(f"the emulated runner returned no outputs for case {case!r}")
        diffs = runner.compare_outputs(manifest, got[case], exp, atol)
        for name, value in diffs.items():
            if value >= worst.get(name, -1.0):
                worst[name], worst_case[name] = value, case
    passed = all((v == 0.0 if k == ids_name else v <= atol) for k, v in worst.items())
    return {"max_abs_diff": worst, "worst_case": worst_case, "passed": bool(passed)}


def _kleidiai_ops(model_path: Path) -> list[str]:
    """Op types in the model file that KleidiAI may take on SME cores (empty for .ort files)."""
    if model_path.suffix != ".onnx":
        return []
    try:
        import onnx
    except ImportError:
        return []
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sorted({n.op_type for n in graph.node} & KLEIDIAI_OPS)


def _split(flat: dict[str, np.ndarray], prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        if prefix and not key.startswith(prefix):
            continue
        if not prefix and key.startswith("alt::"):
            continue
        case, _, name = key[len(prefix):].partition("::")
        out.setdefault(case, {})[name] = value
    return out


def _run_core(env: Arm64Env, art: Path, core: str, inputs: Path, work: Path, model_file: str,
              alt: dict[str, str] | None) -> tuple[dict[str, np.ndarray] | None, dict[str, Any], str, float]:
    out = work / f"out_{core.replace(',', '_').replace('=', '-')}.npz"
    args = [str(RUNNER_PATH), str(art), "--parity-inputs", str(inputs), "--parity-out", str(out),
            "--model-file", model_file]
    for k, v in (alt or {}).items():
        args += ["--parity-alt-config", f"{k}={v}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(env.command(core, *args), capture_output=True, text=True, env=env.environ(),
                              timeout=CORE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, {}, f"timed out after {CORE_TIMEOUT_S} s under emulation", time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}, no output"])[-1]
        return None, {}, f"runner exit {proc.returncode} under qemu -cpu {core}: {tail[:300]}", wall
    try:
        info = json.loads((proc.stdout.strip().splitlines() or ["{}"])[-1])
        with np.load(out) as data:
            flat = {k: data[k] for k in data.files}
    except (ValueError, OSError) as err:  # a runner that exited 0 but wrote no readable result
        return None, {}, f"unreadable runner output under qemu -cpu {core} ({type(err).__name__})", wall
    return flat, info, "", wall


def arm64_parity(artefact_dir: str | Path, *, cores: list[str] | tuple[str, ...] | None = None, seed: int = 0,
                 cache: str | Path | None = None, model_file: str | None = None, write: bool = True,
                 jobs: int | None = None, log: Any = None) -> dict[str, Any]:
    """Run the artefact on each emulated core and compare with x86 (module docstring).

    ``jobs``: emulated cores run at once (default: one per host CPU); wall seconds per core
    grow when they share CPUs, which is one more reason never to read them as latency.

    Writes ``verify_arm64.json`` and the manifest's ``verify_arm64`` entry when ``write``.
    Raises ``BadInputError`` when the emulation environment is missing; a core that fails or
    differs is reported in the result (``passed`` False), not raised.
    """
    env, why = find_env(cache)
    if env is None:
        raise BadInputError(why)
    wanted = wanted_versions()
    if not stamp_is_current(env.stamp, wanted):
        raise BadInputError(f"the arm64 environment in {env.cache} has onnxruntime {env.stamp.get('onnxruntime')} / numpy "
                            f"{env.stamp.get('numpy')}, this host {wanted['onnxruntime']} / {wanted['numpy']}; "
                            f"run `ondevice arm64 setup --cache {env.cache}`")
    cores = check_cores(cores)
    art = Path(artefact_dir).resolve()
    runner = runner_module()
    try:
        manifest = runner.load_manifest(art)
        runner.check_files(art, manifest)
    except runner.RunnerError as err:
        raise ArtefactError(str(err)) from None
    model_file = model_file or runner.default_model_file(manifest)
    if model_file not in manifest["files"]:
        raise BadInputError(f"{model_file} is not in {art}; choose one of: {', '.join(manifest['files'])}")
    atol, storage = parity_tolerance(manifest)
    cases = parity_inputs(manifest, seed)
    names = [o["name"] for o in manifest["outputs"]]
    in_name = manifest["inputs"][0]["name"]
    session = runner.make_session(art / model_file, 1)
    expected = {c: dict(zip(names, session.run(names, runner.complete_feeds(manifest, {in_name: x})), strict=False))
                for c, x in cases.items()}
    del session
    eligible = _kleidiai_ops(art / model_file)
    results = []
    with tempfile.TemporaryDirectory(prefix="ondevice-arm64-") as tmp:
        work = Path(tmp)
        np.savez(work / "inputs.npz", **cases)
        jobs = max(1, min(len(cores), jobs or os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # one qemu process per core, `jobs` at a time
            runs = list(pool.map(lambda c: _run_core(env, art, c, work / "inputs.npz", work, model_file,
                                                     KLEIDIAI_OFF if core_has_sme(c) else None), cores))
        for core, (flat, info, error, wall) in zip(cores, runs, strict=True):
            sme = core_has_sme(core)
            row: dict[str, Any] = {"cpu": core, "family": CORE_FAMILIES[_core_base(core)], "sme": sme,
                                   "atol": atol, "emulated_wall_s": round(wall, 2)}
            if flat is None:
                row.update(passed=False, error=error, max_abs_diff={})
            else:
                row.update(compare_core(manifest, _split(flat), expected, atol))
                row["cpu_features"] = info.get("cpu_features", [])
                row["sme"] = sme or "sme" in row["cpu_features"]
                row["machine"] = info.get("device", {}).get("machine")
                if row["sme"] and any(k.startswith("alt::") for k in flat):
                    off = compare_core(manifest, _split(flat, "alt::"), expected, atol)
                    row["kleidiai_off"] = {"session_config": KLEIDIAI_OFF, **off}
                    row["kleidiai_note"] = _kleidiai_note(row, off, eligible, storage)
            results.append(row)
            if log:
                diff = max(row["max_abs_diff"].values(), default=float("nan"))
                log(f"{core:>12}: {'pass' if row['passed'] else 'FAIL'} max |arm-x86| {diff:.2e} <= {atol:.1e}"
                    + (f" ({row['error']})" if row.get("error") else ""))
    stamp = env.stamp
    result = {
        "format": "ondevice-arm64-parity",
        "artefact": str(art),
        "model_file": model_file,
        "storage": storage,
        "atol": atol,
        "tolerance_rule": "manifest tolerance: 1e-5 for fp32 storage, the documented bound for quantized storage",
        "reference": "x86-64 onnxruntime on this host, same runner session options (1 thread, ORT_ENABLE_ALL)",
        "seed": seed,
        "cases": {c: int(x.shape[0]) for c, x in cases.items()},
        "kleidiai_eligible_ops": eligible,
        "emulator": {"qemu": stamp.get("qemu"), "python": stamp.get("python"),
                     "onnxruntime": stamp.get("onnxruntime"), "numpy": stamp.get("numpy")},
        "cores": results,
        "max_abs_diff": max((max(r["max_abs_diff"].values(), default=0.0) for r in results), default=0.0),
        "passed": all(r["passed"] for r in results),
        "latency_note": "emulated_wall_s is qemu wall time, not device latency; "
                        "measure on the device with export/runner.py and `ondevice report --device-result`",
        "verified_unix": time.time(),
    }
    if write:
        atomic_write_json(art / "verify_arm64.json", result)
        from ondevice.export.manifest import write_manifest

        manifest["verify_arm64"] = {"passed": result["passed"], "atol": atol, "max_abs_diff": result["max_abs_diff"],
                                    "cores": {r["cpu"]: {"passed": r["passed"], "max_abs_diff": r["max_abs_diff"]}
                                              for r in results},
                                    "verified_unix": result["verified_unix"]}
        write_manifest(art, manifest)
    return result


def _kleidiai_note(row: dict[str, Any], off: dict[str, Any], eligible: list[str], storage: str) -> str:
    on_diff = max(row["max_abs_diff"].values(), default=0.0)
    off_diff = max(off["max_abs_diff"].values(), default=0.0)
    if not eligible:
        return (f"SME core: this graph has no int8 MatMul that KleidiAI could take ({storage} storage is "
                f"dequantized before the dense layers); max diff {on_diff:.2e} with KleidiAI, {off_diff:.2e} with "
                "mlas.disable_kleidiai=1")
    head = (f"SME core: onnxruntime may route {', '.join(eligible)} to KleidiAI kernels; max diff {on_diff:.2e} "
            f"with KleidiAI, {off_diff:.2e} with session config mlas.disable_kleidiai=1")
    if off["passed"]:
        return head + " (set it in the app for x86-level int8 numerics)"
    return head + (" (beyond the bound even without KleidiAI: ARM and x86 int8 MatMul kernels differ, so int8 "
                   "MatMul graphs need a looser tolerance)")
