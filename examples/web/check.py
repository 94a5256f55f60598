"""Open an artefact in headless Chromium through this page and compare with onnxruntime in Python.

    python examples/web/check.py ARTEFACT_DIR [--records records.jsonl] [--timeout-s 60]

Copies ``index.html``, ``app.js`` and the artefact into a temporary folder, links
``node_modules`` (``npm install`` of ``package.json``'s pinned onnxruntime-web, run here
when ``examples/web/node_modules`` is absent), serves it on 127.0.0.1, lets Chromium
(``chromium --headless``) run the page, which posts its result back: load time, p50 of
220 runs of the first golden case (batch 1), the golden outputs' largest difference and
the predictions for the records. Prints JSON with, in addition, the largest difference
between the page's predictions and onnxruntime's (Python) on the same records
(``records_max_abs_diff``). Exit 2 when Chromium, node/npm or the npm package is missing,
3 when the page fails or a difference is above ``--atol`` (default 1e-5).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str | None:
    """The Chromium executable on PATH, if any."""
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def node_modules(timeout_s: float = 300) -> Path:
    """``node_modules`` with the pinned onnxruntime-web (``npm install`` into examples/web when absent)."""
    mods = HERE / "node_modules"
    if not (mods / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs").is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError("npm is not installed")
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0 or not (mods / "onnxruntime-web").is_dir():
            raise FileNotFoundError(f"npm install failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return mods


class _Site(http.server.SimpleHTTPRequestHandler):
    """Serves the page's folder; ``POST /result`` delivers the page's result (``server.result``)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
        self.server.result = json.loads(body)  # type: ignore[attr-defined]
        self.server.done.set()  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


def run_page(artefact: Path, records: list[dict[str, Any]] | None = None, *, timeout_s: float = 60) -> dict[str, Any]:
    """The page's result for ``artefact`` (see the module docstring), posted back by the page."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
    mods = node_modules()
    with tempfile.TemporaryDirectory(prefix="ondevice_web_") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        for name in ("index.html", "app.js"):
            shutil.copyfile(HERE / name, site / name)
        os.symlink(mods, site / "node_modules")
        shutil.copytree(artefact, site / "artefact", ignore=shutil.ignore_patterns("*.pt"))
        if (artefact / "hash_reference.js").is_file():
            shutil.copyfile(artefact / "hash_reference.js", site / "hash_reference.js")
        (site / "records.json").write_text(json.dumps(records or []), encoding="utf-8")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Site, directory=str(site)))
        server.done = threading.Event()  # type: ignore[attr-defined]
        server.result = None  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html?records=records.json&report=/result"
        proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                 f"--user-data-dir={Path(tmp) / 'profile'}", "--remote-debugging-port=0", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            finished = server.done.wait(timeout_s)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            server.shutdown()
            server.server_close()
    if not finished:
        raise RuntimeError(f"the page gave no result within {timeout_s:.0f} s")
    return server.result  # type: ignore[attr-defined]


def python_outputs(artefact: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """onnxruntime (Python) outputs of the records, through the artefact's own runner."""
    sys.path.insert(0, str(artefact))
    try:
        import numpy as np
        import runner  # the artefact's runner.py: onnxruntime + numpy only
    finally:
        sys.path.pop(0)
    manifest = runner.load_manifest(artefact)
    if manifest.get("raw_inputs"):
        feeds = runner.records_to_feeds(manifest, records)
    else:
        feeds = {i["name"]: np.asarray([r[i["name"]] for r in records], dtype=i["dtype"]) for i in manifest["inputs"]}
    session = runner.make_session(artefact / "model.onnx", 1)
    names = [o["name"] for o in manifest["outputs"]]
    return dict(zip(names, session.run(names, feeds), strict=True))


def check(artefact: Path, records: list[dict[str, Any]], *, timeout_s: float = 60) -> dict[str, Any]:
    """Page result + ``records_max_abs_diff`` against onnxruntime (Python)."""
    import numpy as np

    page = run_page(artefact, records, timeout_s=timeout_s)
    if "error" in page:
        raise RuntimeError(f"the page failed: {page['error'][:300]}")
    diff = 0.0
    if records:
        for name, want in python_outputs(artefact, records).items():
            got = np.asarray(page["predictions"][name], dtype=np.float64).reshape(want.shape)
            diff = max(diff, float(np.max(np.abs(got - want.astype(np.float64)))))
    page["records_max_abs_diff"] = diff
    page["records"] = len(records)
    return page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artefact", type=Path)
    p.add_argument("--records", type=Path, default=None, help="JSON lines, one record per line")
    p.add_argument("--timeout-s", type=float, default=60)
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)
    records = []
    if args.records:
        records = [json.loads(line) for line in args.records.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        result = check(args.artefact, records, timeout_s=args.timeout_s)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(json.dumps(result))
    ok = result["golden_passed"] and result["golden_max_abs_diff"] <= args.atol and result["records_max_abs_diff"] <= args.atol
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
