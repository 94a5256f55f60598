"""The pipeline: budget × method -> search -> fit -> export -> verify -> profile -> summary.

The layer above the searchers (``ondevice.search``) and the exporter (``ondevice.export``):
it measures exported files, runs the fit-and-retry loop, runs ``auto``'s candidates and writes
the run folders and reports. Searchers never import it (``tests/test_layering.py``).

    compress.py     ``compress``: the budget × method loop (library behind ``ondevice compress``)
    fitting.py      ``search_fitting``: search, measure the export, tighten the margin, retry
    measure.py      exact bytes / latency of a model exported as ``export_artefact`` writes it
    auto.py         ``--method auto``: run the candidate methods, keep the best that fits
    fleet.py        ``--fleet``: one row per device profile, arm64 parity, ``fleet.md``
    summary.py      ``summary.md`` / ``summary.png``
    resume.py       ``--resume`` records of finished (target, method) runs
    options.py      ``--max-loss`` / ``--time-limit`` parsing
    wall_plan.py    ``--time-limit`` over the whole call: each target's window and its search's share
    search_runs.py  run folders of ``ondevice search interactions|features|architecture``
"""

from ondevice.pipeline.auto import AutoSearcher, candidate_methods, relative_loss
from ondevice.pipeline.compress import compress
from ondevice.pipeline.fitting import search_fitting
from ondevice.pipeline.fleet import fleet_profiles_in, fleet_report, render_fleet_markdown
from ondevice.pipeline.measure import candidate_latency, measure_cost, measure_file_bytes
from ondevice.pipeline.options import parse_duration, parse_max_loss
from ondevice.pipeline.resume import resume_options
from ondevice.pipeline.search_runs import search_architecture, search_features, search_interactions
from ondevice.pipeline.summary import load_summary, render_summary_markdown

__all__ = [
    "AutoSearcher",
    "candidate_latency",
    "candidate_methods",
    "compress",
    "fleet_profiles_in",
    "fleet_report",
    "load_summary",
    "measure_cost",
    "measure_file_bytes",
    "parse_duration",
    "parse_max_loss",
    "relative_loss",
    "render_fleet_markdown",
    "render_summary_markdown",
    "resume_options",
    "search_architecture",
    "search_features",
    "search_fitting",
    "search_interactions",
]
