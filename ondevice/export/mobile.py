"""onnxruntime's mobile tooling: the usability checker and the ``.ort`` converter.

Both are onnxruntime's own tools (``python -m onnxruntime.tools.check_onnx_model_mobile_usability``
and ``python -m onnxruntime.tools.convert_onnx_models_to_ort``), called through their module
APIs so their verdicts land in the manifest instead of on a console.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

_VERDICT_RE = re.compile(r"Model should perform well with (.+?) as is: (\w+)")
_FIXED_RE = re.compile(r"Model should perform well with (.+?) if modified to have fixed input shapes: (\w+)")


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def operator_counts(model_path: str | Path) -> dict[str, int]:
    """``{"domain::OpType": count}`` of the top-level graph (domain ``ai.onnx`` by default)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return dict(sorted(Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node).items()))


def check_mobile_usability(model_path: str | Path) -> dict[str, Any]:
    """Run onnxruntime's mobile usability checker and return its verdicts.

    ``nnapi`` / ``coreml_neuralnetwork`` / ``coreml_mlprogram`` are the checker's
    ``YES``/``MAYBE``/``NO`` for "should perform well as is"; ``*_fixed_shapes`` the verdict
    if the batch axis were fixed. ``recommended_ep`` is ``CPU`` when the checker sees no gain
    from NNAPI/CoreML (typical for small Gather + MatMul recommenders). The CPU execution
    provider of the mobile packages runs every standard ONNX operator at this opset, which
    ``export`` proves by loading the model (and converting it to ``.ort`` when asked).
    """
    from onnxruntime.tools.mobile_helpers import usability_checker

    logger = logging.getLogger("ondevice.mobile_usability")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _ListHandler()
    logger.addHandler(handler)
    result: dict[str, Any] = {"tool": "onnxruntime.tools.check_onnx_model_mobile_usability"}
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try_eps = usability_checker.analyze_model(Path(model_path), skip_optimize=False, logger=logger)
        result["ran"] = True
        result["try_nnapi_or_coreml"] = bool(try_eps)
        result["recommended_ep"] = "NNAPI/CoreML worth comparing with CPU" if try_eps else "CPU"
    except Exception as err:  # noqa: BLE001 - the checker is advisory; record why it failed
        result.update(ran=False, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    finally:
        logger.removeHandler(handler)
    keys = {"NNAPI": "nnapi", "CoreML NeuralNetwork": "coreml_neuralnetwork", "CoreML MLProgram": "coreml_mlprogram"}
    for line in handler.lines:
        if m := _VERDICT_RE.search(line):
            result[keys.get(m.group(1), m.group(1))] = m.group(2)
        elif m := _FIXED_RE.search(line):
            result[keys.get(m.group(1), m.group(1)) + "_fixed_shapes"] = m.group(2)
    result["operators"] = operator_counts(model_path)
    return result


def convert_to_ort(model_path: Path, out_dir: Path) -> tuple[Path, Path | None]:
    """Convert ``model_path`` to ``out_dir/model.ort`` with onnxruntime's converter.

    Uses the ``Fixed`` optimisation style (optimisations applied before saving, so the file
    runs on minimal builds without runtime optimisation) and ``target_platform="arm"`` (no
    x86-only NCHWc layout). Also returns the ``required_operators.config`` the converter
    writes, which selects the kernels for a custom minimal onnxruntime build.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        src = Path(scratch) / "in" / model_path.name
        src.parent.mkdir()
        shutil.copyfile(model_path, src)
        dst = Path(scratch) / "out"
        with contextlib.redirect_stdout(io.StringIO()):
            convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform="arm")
        ort_files = list(dst.glob("*.ort"))
        if len(ort_files) != 1:
            raise RuntimeError(f"converter wrote {len(ort_files)} .ort files, expected 1")
        target = out_dir / "model.ort"
        shutil.move(str(ort_files[0]), target)
        configs = list(dst.glob("*.config"))
        config = None
        if configs:
            config = out_dir / "required_operators.config"
            shutil.move(str(configs[0]), config)
    return target, config


def required_operators_config(model_path: str | Path) -> str:
    """The operators ``model_path`` uses in onnxruntime's ``required_operators.config`` format
    (``domain;opset;Op1,Op2`` per line, what ``tools/ci_build/build.py --include_ops_by_config``
    reads to build a minimal onnxruntime for exactly these models)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    ops: dict[str, set[str]] = {}
    for node in model.graph.node:
        ops.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
    lines = [f"# Generated by ondevice from {Path(model_path).name}", *(
        f"{domain};{versions[domain]};{','.join(sorted(names))}" for domain, names in sorted(ops.items()))]
    return "\n".join(lines) + "\n"
