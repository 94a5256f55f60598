"""``ondevice arm64``: build and inspect the QEMU aarch64 emulation environment (issue 7).

``ondevice verify ARTEFACT --arch arm64`` (in ``artefact_commands``) and ``compress --fleet``
use it; see ``ondevice.arm64``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ondevice.cli import cli


@cli.group("arm64")
def arm64_group() -> None:
    """Emulated ARM64 cores (QEMU user-mode) for parity checks of artefacts."""


@arm64_group.command("setup")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder to build in (default: $ONDEVICE_ARM64_CACHE or ~/.cache/ondevice/arm64)")
@click.option("--force", is_flag=True, help="rebuild every piece even when the stamp is current")
@click.option("--quiet", is_flag=True, help="no progress lines")
def setup_cmd(cache: Path | None, force: bool, quiet: bool) -> None:
    """Install qemu-aarch64 (>= 10), an arm64 Python and aarch64 onnxruntime/numpy into a cache folder.

    \b
    Nothing is installed on the host: the .debs come through private apt states from the
    Debian archive the host's apt uses (qemu-user from trixie, the userland from the host's
    suite) and are unpacked with dpkg-deb -x; the wheels match the host's onnxruntime and
    numpy versions. Idempotent (stamp.json); about 30 s and 210 MB the first time.
    """
    from ondevice.arm64.setup import default_cache, setup_arm64

    stamp = setup_arm64(cache, force=force, log=None if quiet else lambda line: click.echo(f"[arm64] {line}", err=True))
    where = Path(cache).expanduser().resolve() if cache else default_cache()
    click.echo(f"arm64 emulation ready in {where}: qemu {stamp['qemu']}, Python {stamp['python']}, "
               f"onnxruntime {stamp['onnxruntime']}, numpy {stamp['numpy']}")


@arm64_group.command("status")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder to look in (default: $ONDEVICE_ARM64_CACHE or ~/.cache/ondevice/arm64)")
@click.option("--json", "as_json", is_flag=True, help="print stamp.json")
def status_cmd(cache: Path | None, as_json: bool) -> None:
    """Say whether the emulation environment is there and current (exit 2 when it is not)."""
    from ondevice.arm64.setup import find_env, stamp_is_current, wanted_versions
    from ondevice.errors import BadInputError

    env, why = find_env(cache)
    if env is None:
        raise BadInputError(why)
    if not stamp_is_current(env.stamp, wanted_versions()):
        raise BadInputError(f"the environment in {env.cache} was built for other versions; run `ondevice arm64 setup "
                            f"--cache {env.cache}`")
    if as_json:
        click.echo(json.dumps(env.stamp, indent=2))
        return
    mb = sum(env.stamp.get("disk_bytes", {}).values()) / 1e6
    click.echo(f"arm64 emulation ready in {env.cache}: qemu {env.stamp['qemu']}, Python {env.stamp['python']}, "
               f"onnxruntime {env.stamp['onnxruntime']}, numpy {env.stamp['numpy']} ({mb:.0f} MB)")
