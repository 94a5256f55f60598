"""Export, verify, profile and report on-device artefacts (DESIGN §8-§10).

>>> from ondevice.export import export_artefact, verify_artefact, profile_artefact, build_report  # doctest: +SKIP
"""

from ondevice.export.manifest import MANIFEST_KEYS, OPSET, Artefact, load_artefact
from ondevice.export.onnx_export import deployable_model, export_artefact
from ondevice.export.profile import profile_artefact
from ondevice.export.report import build_report
from ondevice.export.verify import verify_artefact

__all__ = [
    "MANIFEST_KEYS",
    "OPSET",
    "Artefact",
    "build_report",
    "deployable_model",
    "export_artefact",
    "load_artefact",
    "profile_artefact",
    "verify_artefact",
]
