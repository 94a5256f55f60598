"""Interaction searchers: which feature interactions a CTR model computes (issue 6).

>>> from ondevice.search.interaction import AutoFISSearcher
>>> AutoFISSearcher(search_epochs=3).get_params()["c"]
'auto'
"""

from ondevice.search.interaction.autofis import AutoFISSearcher
from ondevice.search.interaction.optinter import OptInterSearcher

__all__ = ["AutoFISSearcher", "OptInterSearcher"]
