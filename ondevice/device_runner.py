"""Access to the torch-free device runner that ships with the package.

The runner (``ondevice/_resources/device_runner/runner.py``; ``export/runner.py`` at the repository
root is a link to it, so there is one source) imports only onnxruntime and numpy. The host
side imports the same file so host and device measure and compare in exactly one way.

A core module (no ondevice imports): ``validation`` (below ``train`` and ``data``) uses the
runner's JSON checker, the exporter (``ondevice.export._runner``) and the pipeline its timing.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

__all__ = ["RUNNER_PATH", "runner_module"]

#: The canonical runner file; ``export_artefact`` copies it into every artefact folder.
RUNNER_PATH = Path(__file__).resolve().parent / "_resources" / "device_runner" / "runner.py"


@lru_cache(maxsize=1)
def runner_module() -> ModuleType:
    """The runner imported as a module (``ondevice_device_runner``)."""
    spec = importlib.util.spec_from_file_location("ondevice_device_runner", RUNNER_PATH)
    assert spec is not None and spec.loader is not None, f"runner missing at {RUNNER_PATH}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
