"""Every error ondevice raises on purpose, with the exit code the CLI maps it to.

Exit codes (documented in the README, one table for every command):

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     unexpected internal error (a bug: please report it with the traceback)
2     bad input: missing/corrupt file, wrong format, bad option value
3     a broken promise: artefact over budget, failed parity, missed latency target
====  ==========================================================================

Each class also inherits from a builtin exception so generic handlers still catch it
(the scikit-learn ``exceptions.py`` convention).

Examples
--------
>>> try:
...     raise BadInputError("criteo.tsv line 7: 39 fields, expected 40")
... except ValueError as err:
...     print(err.exit_code, err)
2 criteo.tsv line 7: 39 fields, expected 40
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PROMISE = 3


class OndeviceError(Exception):
    """Base class: a one-line message meant for the user, plus an exit code."""

    exit_code: int = EXIT_BAD_INPUT


class BadInputError(OndeviceError, ValueError):
    """The input (file, option, data) is wrong; the message says how to fix it."""

    exit_code = EXIT_BAD_INPUT


class DataFormatError(BadInputError):
    """A raw data file does not follow its declared format (names file and line)."""


class SchemaMismatchError(BadInputError):
    """Ids, schema or checkpoint come from different ``prepare`` runs."""


class CheckpointError(BadInputError):
    """A checkpoint is missing, truncated, corrupt or of an unknown version."""


class ArtefactError(BadInputError):
    """An artefact folder is incomplete or its files do not match the manifest."""


class OutputExistsError(BadInputError):
    """The output folder exists and ``--force`` was not given."""


class BrokenPromiseError(OndeviceError, RuntimeError):
    """A promise ondevice makes was not kept (budget, parity, latency)."""

    exit_code = EXIT_BROKEN_PROMISE


class BudgetExceededError(BrokenPromiseError):
    """An artefact is larger on disk than its byte budget."""

    def __init__(self, message: str, *, file_bytes: int | None = None, budget: int | None = None):
        super().__init__(message)
        self.file_bytes = file_bytes
        self.budget = budget


class BudgetTooSmallError(BadInputError):
    """The budget is below the smallest model a method can build."""

    def __init__(self, message: str, *, minimum_bytes: int | None = None, parts: dict[str, int] | None = None):
        super().__init__(message)
        self.minimum_bytes = minimum_bytes
        self.parts = parts  # the minimum, itemised (``ByteAccountant.minimum_parts``)


class ParityError(BrokenPromiseError):
    """ONNX Runtime outputs differ from PyTorch's by more than the stated tolerance."""

    def __init__(self, message: str, *, max_abs_diff: float | None = None, tolerance: float | None = None):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


class LatencyTargetError(BrokenPromiseError):
    """Measured p99 latency is above the device profile's target."""


class RuntimeMemoryError(BrokenPromiseError):
    """The resident memory a session adds is above the device profile's ``memory_budget_runtime``."""


class QualityFloorError(BrokenPromiseError):
    """No candidate kept the validation metric within ``--max-loss`` of the full model."""

    def __init__(self, message: str, *, best_method: str | None = None, best_loss: float | None = None,
                 budget_bytes: int | None = None, candidates: list[dict] | None = None):
        super().__init__(message)
        self.best_method = best_method
        self.best_loss = best_loss
        self.budget_bytes = budget_bytes
        self.candidates = candidates  # auto: every candidate it tried (outcome, metric, seconds), for the summary


class WeakSignalError(BadInputError):
    """A searcher's learned ranking (gates, keep probabilities, estimator) does not separate its
    choices from chance on held-out data, so its pick is not deployed (threshold in the message)."""

    def __init__(self, message: str, *, statistic: float | None = None, threshold: float | None = None):
        super().__init__(message)
        self.statistic = statistic
        self.threshold = threshold
