"""``ondevice arm64 setup``: an aarch64 onnxruntime under QEMU user-mode, in a cache folder.

Three pieces, each built into a temporary sibling and renamed into place, none installed on
the host (no ``dpkg --add-architecture``, no binfmt_misc, no chroot)::

    CACHE/qemu/qemu-aarch64   static qemu >= 10 from Debian trixie's ``qemu-user`` .deb
    CACHE/root/               arm64 Debian userland: python3.X-minimal, libpython3.X-stdlib,
                              libstdc++6, libgcc-s1 and their dependencies, ``dpkg-deb -x``-ed
    CACHE/site/               aarch64 onnxruntime + numpy wheels at the host's versions
    CACHE/stamp.json          what was installed (versions, archive); makes setup idempotent

The .debs come through *private* apt states (own ``Dir::State``, ``Dir::Cache`` and sources
file; ``APT::Architecture=arm64`` for the userland, suite ``trixie`` for qemu) that reuse the
Debian archive the host's apt is configured with. Why qemu >= 10: bookworm's 7.2 hands the
guest the host's x86 ``/proc/cpuinfo`` (onnxruntime's cpuinfo then crashes at import) and
computes int8 on SME cores wrongly (1.5e-2 off). The apt and wheel download caches
(``CACHE/work``) are deleted at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondevice.errors import BadInputError
from ondevice.io import atomic_write_json

__all__ = [
    "Arm64Env",
    "default_cache",
    "find_env",
    "host_archive",
    "parse_apt_sources",
    "pick_archive",
    "private_sources_line",
    "setup_arm64",
    "stamp_is_current",
    "wanted_versions",
]

STAMP_FORMAT = 2
MIN_QEMU = (10, 0)
QEMU_SUITE = "trixie"
USERLAND_PACKAGES = ("python{v}-minimal", "libpython{v}-stdlib", "libstdc++6", "libgcc-s1")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
ENV_CACHE = "ONDEVICE_ARM64_CACHE"
ENV_MIRROR = "ONDEVICE_DEBIAN_MIRROR"
SMOKE = ("import platform, numpy, onnxruntime; "
         "print(platform.machine(), onnxruntime.__version__, numpy.__version__)")

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    sys.stderr.write(f"[arm64] {line}\n")
    sys.stderr.flush()


def default_cache() -> Path:
    """``$ONDEVICE_ARM64_CACHE``, else ``~/.cache/ondevice/arm64`` (``$XDG_CACHE_HOME`` honoured)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ondevice" / "arm64"


# ---------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class Arm64Env:
    """A built emulation environment: how to start the arm64 Python."""

    cache: Path
    qemu: Path
    root: Path
    site: Path
    python: Path
    stamp: dict[str, Any]

    def command(self, cpu: str, *args: str) -> list[str]:
        """``qemu-aarch64 -cpu CPU -L ROOT ROOT/usr/bin/python3.X ARGS``."""
        return [str(self.qemu), "-cpu", cpu, "-L", str(self.root), str(self.python), *args]

    def environ(self) -> dict[str, str]:
        """Environment for the emulated Python: only the aarch64 site folder on its path."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OMP_", "VIRTUAL_ENV"))}
        env.update(PYTHONPATH=str(self.site), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
                   OMP_NUM_THREADS="1", LC_ALL="C.UTF-8")
        return env


def find_env(cache: str | Path | None = None) -> tuple[Arm64Env | None, str]:
    """The environment in ``cache`` (default: ``default_cache()``), or ``None`` and why not."""
    cache = Path(cache) if cache is not None else default_cache()
    stamp_path = cache / "stamp.json"
    hint = f"run `ondevice arm64 setup --cache {cache}`"
    if not stamp_path.is_file():
        return None, f"no arm64 emulation environment in {cache}; {hint}"
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        stamp = None
    if not isinstance(stamp, dict):
        return None, f"{stamp_path} is unreadable; {hint} --force"
    python = cache / "root" / "usr" / "bin" / f"python{stamp.get('python', '')}"
    env = Arm64Env(cache=cache, qemu=cache / "qemu" / "qemu-aarch64", root=cache / "root", site=cache / "site",
                   python=python, stamp=stamp)
    for path in (env.qemu, env.python, env.site / "onnxruntime"):
        if not path.exists():
            return None, f"{path} is missing (incomplete arm64 environment); {hint} --force"
    return env, ""


# ---------------------------------------------------------------------------- pure helpers
def wanted_versions() -> dict[str, str]:
    """What the environment must match: the host's Python minor, onnxruntime and numpy."""
    import numpy
    import onnxruntime

    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}


def stamp_is_current(stamp: dict[str, Any] | None, wanted: dict[str, str]) -> bool:
    """True when a stamp records this format, qemu >= 10 and exactly the wanted versions."""
    if not stamp or stamp.get("format") != STAMP_FORMAT:
        return False
    if _version_tuple(str(stamp.get("qemu", "0"))) < MIN_QEMU:
        return False
    return all(stamp.get(k) == v for k, v in wanted.items())


def _version_tuple(text: str) -> tuple[int, ...]:
    """``1:10.0.7+ds-1`` / ``10.0.7`` -> ``(10, 0, 7)`` (epoch and Debian revision dropped)."""
    core = text.split(":", 1)[-1]
    return tuple(int(p) for p in re.findall(r"\d+", core.split("+")[0].split("-")[0])[:3])


def parse_apt_sources(text: str, *, deb822: bool) -> list[dict[str, Any]]:
    """Entries ``{"types", "uris", "suites", "components", "signed_by"}`` of one sources file.

    ``deb822``: the ``*.sources`` stanza format; else the one-line ``sources.list`` format.
    Disabled stanzas (``Enabled: no``) and comments are skipped.
    """
    entries: list[dict[str, Any]] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if not fields or fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append({"types": fields.get("types", "").split(), "uris": fields.get("uris", "").split(),
                            "suites": fields.get("suites", "").split(), "components": fields.get("components", "").split(),
                            "signed_by": fields.get("signed-by", "").split()[0] if fields.get("signed-by") else None})
        return entries
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith(("deb ", "deb\t")):
            continue
        options: dict[str, str] = {}
        m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)$", line)
        rest = m.group(2) if m else line[3:].strip()
        if m:
            for opt in m.group(1).split():
                k, _, v = opt.partition("=")
                options[k] = v
        parts = rest.split()
        if len(parts) < 2:
            continue
        entries.append({"types": ["deb"], "uris": [parts[0]], "suites": [parts[1]], "components": parts[2:],
                        "signed_by": options.get("signed-by")})
    return entries


def pick_archive(entries: list[dict[str, Any]], codename: str) -> tuple[str, str | None] | None:
    """(URI, signed-by) of the main Debian archive: a ``deb`` entry for suite ``codename`` with ``main``."""
    for e in entries:
        if "deb" in e["types"] and codename in e["suites"] and "main" in e["components"] and e["uris"]:
            return e["uris"][0].rstrip("/"), e["signed_by"]
    return None


def private_sources_line(uri: str, suite: str, arch: str, signed_by: str | None) -> str:
    """One ``sources.list`` line for a private apt state."""
    opts = f"arch={arch}" + (f" signed-by={signed_by}" if signed_by else "")
    return f"deb [{opts}] {uri} {suite} main\n"


def host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return ""
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return m.group(1) if m else ""


def host_archive() -> tuple[str, str | None, str]:
    """(archive URI, signed-by keyring, host codename), read from the host's apt configuration.

    ``$ONDEVICE_DEBIAN_MIRROR`` overrides the URI. One-line ``BadInputError`` when none is found.
    """
    codename = host_codename()
    if os.environ.get(ENV_MIRROR):
        return os.environ[ENV_MIRROR].rstrip("/"), None, codename or "bookworm"
    if not codename or shutil.which("apt-config") is None:
        raise BadInputError(f"this host is not Debian-like (no apt or codename); set {ENV_MIRROR}=<the URL of a Debian archive>")
    out = subprocess.run(["apt-config", "shell", "SL", "Dir::Etc::sourcelist/f", "SP", "Dir::Etc::sourceparts/d"],
                         capture_output=True, text=True, check=False).stdout
    paths = dict(re.findall(r"^(SL|SP)='([^']*)'", out, re.M))
    files: list[tuple[Path, bool]] = []
    if paths.get("SL"):
        files.append((Path(paths["SL"]), False))
    if paths.get("SP") and Path(paths["SP"]).is_dir():
        for f in sorted(Path(paths["SP"]).iterdir()):
            if f.suffix in (".list", ".sources"):
                files.append((f, f.suffix == ".sources"))
    entries: list[dict[str, Any]] = []
    for path, is822 in files:
        if path.is_file():
            entries += parse_apt_sources(path.read_text(encoding="utf-8", errors="replace"), deb822=is822)
    found = pick_archive(entries, codename)
    if found is None:
        raise BadInputError(f"no Debian archive for '{codename} main' in the host's apt sources; "
                            f"set {ENV_MIRROR}=<the URL of a Debian archive>")
    return found[0], found[1], codename


# ---------------------------------------------------------------------------- building
def _run(cmd: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 900) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BadInputError(f"{cmd[0]} not found ({what}); install it (apt-get install {_PROVIDER.get(cmd[0], cmd[0])})") from None
    except subprocess.TimeoutExpired:
        raise BadInputError(f"{what} took over {timeout:.0f} s; check the network and rerun `ondevice arm64 setup`") from None
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + proc.stdout).strip().splitlines() if x.strip()]
        last = next((x for x in reversed(lines) if x.startswith(("E:", "ERROR", "error"))), lines[-1] if lines else "no output")
        raise BadInputError(f"{what} failed: {last.strip()[:300]}")
    return proc.stdout


_PROVIDER = {"apt-get": "apt", "dpkg-deb": "dpkg", "apt-config": "apt"}


class _PrivateApt:
    """apt-get on a private state folder: nothing of the host's apt state is read or written."""

    def __init__(self, folder: Path, sources_line: str, arch: str) -> None:
        self.folder = folder
        for sub in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "state" / "status").touch()
        (folder / "etc" / "sources.list").write_text(sources_line, encoding="utf-8")
        self.options = [
            "-o", f"Dir::State={folder / 'state'}", "-o", f"Dir::State::status={folder / 'state' / 'status'}",
            "-o", f"Dir::Cache={folder / 'cache'}", "-o", f"Dir::Etc::SourceList={folder / 'etc' / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::Etc::Preferences={folder / 'etc' / 'preferences'}",
            "-o", f"Dir::Etc::PreferencesParts={folder / 'etc' / 'preferences.d'}",
            "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}", "-o", "Debug::NoLocking=1",
            "-o", "Acquire::Languages=none", "-o", "APT::Install-Recommends=false", "-q",
        ]
        if os.geteuid() == 0:  # apt's _apt sandbox user may not write into a user's cache folder
            self.options += ["-o", "APT::Sandbox::User=root"]

    def __call__(self, *args: str, what: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        return _run(["apt-get", *self.options, *args], what, cwd=cwd, env=env)


def _extract(deb: Path, dest: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}")


def _qemu_version(binary: Path) -> str:
    out = _run([str(binary), "--version"], "qemu-aarch64 --version", timeout=30)
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return m.group(1) if m else "0"


def _build_qemu(cache: Path, work: Path, uri: str, signed_by: str | None, log: Log) -> str:
    """Static ``qemu-aarch64`` from trixie's ``qemu-user``; returns its version."""
    host_arch = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()
    apt = _PrivateApt(work / "apt-qemu", private_sources_line(uri, QEMU_SUITE, host_arch, signed_by), host_arch)
    log(f"qemu: apt-get update ({uri} {QEMU_SUITE} main, {host_arch}, private state)")
    apt("update", what=f"apt-get update of {QEMU_SUITE} (private state)")
    debs = work / "debs-qemu"
    debs.mkdir(parents=True, exist_ok=True)
    log(f"qemu: downloading qemu-user from {QEMU_SUITE}")
    apt("download", "qemu-user", what=f"downloading qemu-user from {QEMU_SUITE}", cwd=debs)
    deb = next(iter(sorted(debs.glob("qemu-user_*.deb"))), None)
    if deb is None:
        raise BadInputError(f"apt did not download qemu-user from {QEMU_SUITE}; install qemu-user (>= 10) and rerun")
    unpacked = work / "qemu-unpacked"
    _extract(deb, unpacked)
    binary = next((p for p in (unpacked / "usr" / "bin" / "qemu-aarch64-static", unpacked / "usr" / "bin" / "qemu-aarch64")
                   if p.is_file()), None)
    if binary is None:
        raise BadInputError(f"{deb.name} holds no usr/bin/qemu-aarch64; install qemu-user (>= 10) by hand")
    tmp = cache / ".qemu.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(binary, tmp / "qemu-aarch64")
    version = _qemu_version(tmp / "qemu-aarch64")
    if _version_tuple(version) < MIN_QEMU:
        raise BadInputError(f"{deb.name} has qemu {version} < 10; set {ENV_MIRROR} to an archive that carries trixie")
    _replace(tmp, cache / "qemu")
    log(f"qemu: {deb.name} -> {cache / 'qemu' / 'qemu-aarch64'} (qemu {version}, static)")
    return version


def _build_userland(cache: Path, work: Path, uri: str, signed_by: str | None, codename: str, python: str,
                    log: Log) -> list[str]:
    """arm64 python + libraries from the host's suite; returns the installed .deb names."""
    apt = _PrivateApt(work / "apt-arm64", private_sources_line(uri, codename, "arm64", signed_by), "arm64")
    log(f"userland: apt-get update ({uri} {codename} main, arm64, private state)")
    apt("update", what=f"apt-get update of {codename} arm64 (private state)")
    packages = [p.format(v=python) for p in USERLAND_PACKAGES]
    log(f"userland: resolving and downloading {' '.join(packages)} (+ dependencies) for arm64")
    apt("install", "--download-only", "-y", *packages, what="downloading the arm64 userland")
    debs = sorted((work / "apt-arm64" / "cache" / "archives").glob("*.deb"))
    if not debs:
        raise BadInputError("apt downloaded no arm64 .debs; rerun `ondevice arm64 setup --force`")
    tmp = cache / ".root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        _extract(deb, tmp)
    if not (tmp / "usr" / "bin" / f"python{python}").exists():
        raise BadInputError(f"the arm64 userland has no usr/bin/python{python}; the host's suite {codename} "
                            f"does not carry Python {python}: use a host Python from the distribution")
    _compile_bytecode(tmp / "usr" / "lib" / f"python{python}", "userland", log)
    _replace(tmp, cache / "root")
    names = [d.name.split("_")[0] for d in debs]
    log(f"userland: {len(debs)} .debs unpacked into {cache / 'root'}")
    return names


def _build_site(cache: Path, work: Path, wanted: dict[str, str], log: Log) -> None:
    """aarch64 onnxruntime + numpy wheels (pip resolves their dependencies) into ``site``."""
    reqs = [f"onnxruntime=={wanted['onnxruntime']}", f"numpy=={wanted['numpy']}"]
    log(f"wheels: pip install --target (aarch64, cp{wanted['python'].replace('.', '')}) {' '.join(reqs)}")
    tmp = cache / ".site.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plat = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    abi = f"cp{wanted['python'].replace('.', '')}"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "--target", str(tmp), *plat, "--python-version", wanted["python"], "--implementation", "cp", "--abi", abi,
           "--only-binary=:all:", "--cache-dir", str(work / "pip-cache"), *reqs]
    _run(cmd, "pip install of the aarch64 wheels", timeout=1800)
    _compile_bytecode(tmp, "wheels", log)
    _replace(tmp, cache / "site")
    found = sorted(p.name.removesuffix(".dist-info") for p in (cache / "site").glob("*.dist-info"))
    log(f"wheels: {', '.join(found)} -> {cache / 'site'}")


def _compile_bytecode(folder: Path, what: str, log: Log) -> None:
    """Write ``__pycache__/*.cpython-3X.pyc`` with the host Python (same minor, same magic).

    Debian's .debs carry no bytecode (postinst makes it) and pip ran with ``--no-compile``;
    without it every emulated run compiles numpy and the stdlib again (17 s instead of 5 s).
    """
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(folder)], capture_output=True,
                   check=False, timeout=900)  # a few stdlib test files do not compile on purpose
    log(f"{what}: bytecode compiled ({time.perf_counter() - t0:.0f} s)")


def _replace(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _smoke(env: Arm64Env, log: Log) -> str:
    log("smoke test: import onnxruntime + numpy under qemu-aarch64 -cpu cortex-a53")
    t0 = time.perf_counter()
    out = _run(env.command("cortex-a53", "-c", SMOKE), "the smoke test under emulation", env=env.environ(), timeout=300)
    line = out.strip().splitlines()[-1] if out.strip() else ""
    if not line.startswith("aarch64"):
        raise BadInputError(f"the smoke test printed {line!r}, expected aarch64; rerun `ondevice arm64 setup --force`")
    log(f"smoke test: {line} ({time.perf_counter() - t0:.1f} s)")
    return line


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def setup_arm64(cache: str | Path | None = None, *, force: bool = False, log: Log | None = _stderr) -> dict[str, Any]:
    """Build (or find up to date) the emulation environment; returns the stamp.

    Idempotent: a stamp that matches the host's Python minor, onnxruntime and numpy
    versions and whose files exist means nothing is downloaded. ``force`` rebuilds all.
    """
    log = log or (lambda _line: None)
    cache = Path(cache).expanduser().resolve() if cache is not None else default_cache()
    wanted = wanted_versions()
    env, _why = find_env(cache)
    if env is not None and not force and stamp_is_current(env.stamp, wanted):
        log(f"up to date in {cache}: qemu {env.stamp['qemu']}, Python {env.stamp['python']}, "
            f"onnxruntime {env.stamp['onnxruntime']}, numpy {env.stamp['numpy']}")
        return env.stamp
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise BadInputError("apt-get and dpkg-deb are needed to fetch the arm64 pieces; run this on a Debian/Ubuntu host "
                            "(apt-get install apt dpkg)")
    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "stamp.json").unlink(missing_ok=True)  # a half-built folder must never look complete
    uri, signed_by, codename = host_archive()
    log(f"building in {cache}: qemu-aarch64 >= 10 ({QEMU_SUITE}), arm64 Python {wanted['python']} ({codename}), "
        f"onnxruntime {wanted['onnxruntime']} + numpy {wanted['numpy']} aarch64 wheels; archive {uri}")
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    old = env.stamp if env is not None and env.stamp.get("format") == STAMP_FORMAT else {}  # reuse same-format pieces
    qemu_bin = cache / "qemu" / "qemu-aarch64"
    qemu_version = _qemu_version(qemu_bin) if qemu_bin.is_file() and not force else "0"
    if _version_tuple(qemu_version) < MIN_QEMU:
        qemu_version = _build_qemu(cache, work, uri, signed_by, log)
    else:
        log(f"qemu: {qemu_version} already in {qemu_bin}")
    python_bin = cache / "root" / "usr" / "bin" / f"python{wanted['python']}"
    if force or not python_bin.exists() or old.get("codename") != codename:
        debs = _build_userland(cache, work, uri, signed_by, codename, wanted["python"], log)
    else:
        debs = list(old.get("debs", []))
        log(f"userland: Python {wanted['python']} already in {cache / 'root'}")
    if force or any(old.get(k) != wanted[k] for k in ("onnxruntime", "numpy", "python")) or not (cache / "site").is_dir():
        _build_site(cache, work, wanted, log)
    else:
        log(f"wheels: onnxruntime {wanted['onnxruntime']} + numpy {wanted['numpy']} already in {cache / 'site'}")
    shutil.rmtree(work, ignore_errors=True)
    stamp: dict[str, Any] = {"format": STAMP_FORMAT, "qemu": qemu_version, **wanted, "codename": codename,
                             "archive": uri, "qemu_suite": QEMU_SUITE, "debs": debs}
    probe = Arm64Env(cache=cache, qemu=qemu_bin, root=cache / "root", site=cache / "site", python=python_bin, stamp=stamp)
    stamp["smoke"] = _smoke(probe, log)
    stamp["disk_bytes"] = {k: _du(cache / k) for k in ("qemu", "root", "site")}
    stamp["setup_seconds"] = round(time.perf_counter() - started, 1)
    stamp["created_unix"] = time.time()
    atomic_write_json(cache / "stamp.json", stamp)
    mb = {k: v / 1e6 for k, v in stamp["disk_bytes"].items()}
    log(f"done in {stamp['setup_seconds']:.0f} s: qemu {mb['qemu']:.0f} MB, root {mb['root']:.0f} MB, "
        f"site {mb['site']:.0f} MB in {cache}")
    return stamp
