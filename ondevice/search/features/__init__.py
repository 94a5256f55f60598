"""Feature-selection searchers (issue 6): a dropped field leaves the artefact and the schema.

>>> from ondevice.search import make_searcher
>>> make_searcher("autofield", num_fields=3).get_params()["num_fields"]
3
"""

from ondevice.search.features.adafs import AdaFSSearcher
from ondevice.search.features.autofield import AutoFieldSearcher
from ondevice.search.features.subset import fit_ranked_fields, gated_fields, select_model_fields

__all__ = ["AdaFSSearcher", "AutoFieldSearcher", "fit_ranked_fields", "gated_fields", "select_model_fields"]
