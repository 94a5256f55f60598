"""The device runner as the exporter uses it (one source: :mod:`ondevice.device_runner`)."""

from ondevice.device_runner import RUNNER_PATH, runner_module

__all__ = ["RUNNER_PATH", "runner_module"]
