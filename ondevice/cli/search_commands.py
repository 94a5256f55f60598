"""``ondevice search ...``: the interaction, feature and architecture searchers (issue 6).

Each searcher area adds its subcommand to :data:`search_group` from a module of its own
(``search_<area>_commands.py``), registered in ``ondevice.cli._register_commands``. A
subcommand writes a *run folder* (``model.pt`` + ``train.json``) that ``ondevice compress``
and ``ondevice export`` take like any trained run.
"""

from __future__ import annotations

from ondevice.cli import cli


@cli.group("search", context_settings={"help_option_names": ["-h", "--help"]})
def search_group() -> None:
    """Search interactions, features or architectures; each writes a run folder.

    \b
    The result is a trained run (model.pt, train.json) ready for `ondevice compress`
    or `ondevice export`.
    """
