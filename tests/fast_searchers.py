"""Settings that keep each registered searcher to a second or two on the tests' tiny data.

The code path is the method's own; only epochs, batch sizes and sample counts shrink. Shared
by the reproducibility test (tests/search/test_reproducible.py) and the registry-wide contract
test (tests/test_searcher_contract.py).
"""

from __future__ import annotations

FAST: dict[str, dict] = {
    "uniform": {"epochs": 1, "batch_size": 256}, "hash": {"epochs": 1, "batch_size": 256},
    "mde": {"epochs": 1, "batch_size": 256}, "sseds": {"epochs": 1, "batch_size": 256},
    "frequency": {"epochs": 1, "batch_size": 256},
    "pep": {"epochs": 1, "batch_size": 256, "search_epochs": 2, "threshold_init": -1.0},
    # signal_level=0: a one-epoch search on tiny data has no ranking signal to check (the signal
    # checks have their own tests)
    "autofield": {"epochs": 1, "batch_size": 256, "search_epochs": 1, "signal_level": 0},
    "adafs": {"epochs": 1, "batch_size": 256, "search_epochs": 1, "signal_level": 0},
    "autofis": {"epochs": 1, "batch_size": 256, "search_epochs": 1},
    "optinter": {"epochs": 1, "batch_size": 256, "search_epochs": 1},
    "deeplight": {"epochs": 1, "batch_size": 256, "finetune_epochs": 1},
    "rule": {"n_blocks": 4, "n_groups": 4, "epochs": 2, "batch_size": 512, "n_samples": 60, "finetune_epochs": 0,
             "eval_users": None, "cycles": 60},
}
