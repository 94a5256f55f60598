"""The ``ondevice`` command line: thin click commands over library functions.

Each command parses its options, calls one library function and prints the result. Every
deliberate failure is an ``OndeviceError`` and becomes a one-line message on stderr with
the documented exit code (2 bad input, 3 broken promise); no traceback is shown unless
``ONDEVICE_DEBUG=1`` is set.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from ondevice import __version__
from ondevice.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, OndeviceError

_USER_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOENT, errno.EROFS, errno.EISDIR,
                     errno.ENOSPC, errno.EEXIST, errno.ENAMETOOLONG}


class OndeviceGroup(click.Group):
    """A click group that turns ``OndeviceError`` into a one-line error and exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except OndeviceError as err:
            if os.environ.get("ONDEVICE_DEBUG"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            # File-system trouble with a path the user gave (permissions, read-only file
            # system, a file where a folder should be, disk full): one line, exit 2.
            if os.environ.get("ONDEVICE_DEBUG") or err.errno not in _USER_PATH_ERRNOS:
                raise
            where = f": {err.filename}" if err.filename else ""
            click.echo(f"error: {err.strerror}{where}; check the path and its permissions", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted; completed work was saved (use --resume where offered)", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory; use a smaller --batch-size or a machine with more memory", err=True)
            sys.exit(EXIT_INTERNAL)


@click.group(cls=OndeviceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ondevice")
def cli() -> None:
    """Compress recommender models into small ONNX artefacts for devices.

    \b
    Flow: prepare -> train -> compress (search -> export -> verify -> profile) -> report
    Exit codes: 0 ok, 1 internal error, 2 bad input, 3 broken promise (budget/parity/latency).
    """


def _register_commands() -> None:
    # Each area owns one module that adds its commands to ``cli``.
    from ondevice.cli import data_commands, train_commands  # noqa: F401

    for optional in ("artefact_commands", "compress_commands", "search_commands", "search_interaction_commands",
                     "search_feature_commands", "search_architecture_commands", "search_optinter_commands", "evaluate_commands",
                     "arm64_commands"):
        try:
            __import__(f"ondevice.cli.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"ondevice.cli.{optional}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_commands()
    try:
        cli.main(args=argv, prog_name="ondevice", standalone_mode=True)
    except click.exceptions.Exit as e:  # pragma: no cover - standalone_mode handles it
        sys.exit(e.exit_code)


# click's own usage errors already exit with 2 (= EXIT_BAD_INPUT); keep them consistent.
assert click.UsageError.exit_code == EXIT_BAD_INPUT
