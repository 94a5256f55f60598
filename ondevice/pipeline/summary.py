"""``compress``'s summary: ``summary.md`` (one row per run, auto's candidates, warnings,
failures) and ``summary.png`` (validation metric vs artefact bytes); ``summary.json`` is the dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["load_summary", "metric_label", "plot_summary", "render_summary_markdown"]


def metric_label(metric: str) -> str:
    """``auc`` -> ``AUC`` (the CTR wording), ``recall@20`` stays."""
    return "AUC" if metric == "auc" else metric


def _stored_as(config: dict[str, Any]) -> str:
    """How the parts no method compresses were stored: ``MLP int8/2 200-200; first-order fp16``."""
    data = config.get("_data") or {}
    if "chosen" in data:  # auto: the chosen method's config
        data = (data.get("config") or {}).get("_data") or {}
    parts = []
    mlp = data.get("mlp")
    if mlp:
        parts.append(f"MLP {mlp}" + (f" {'-'.join(map(str, data['mlp_dims']))}" if data.get("mlp_dims") else ""))
    if data.get("first_order"):
        parts.append(f"first-order {data['first_order']}")
    return "; ".join(parts) or "—"


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def render_summary_markdown(s: dict[str, Any]) -> str:
    full = s["full_model"]
    metric = full.get("metric", "auc")
    label = metric_label(metric)
    full_test = (full.get("test") or {}).get(metric)
    floor = s.get("max_loss")
    floor_text = ("no quality floor" if floor is None else
                  f"quality floor: at most {floor:.1%} relative val loss vs the full model "
                  f"({'every run' if s.get('max_loss_applies_to') == 'every run' else 'auto'})")
    lines = [
        "# ondevice compress",
        "",
        f"Run `{s['run_dir']}`. Full model: {full['file_bytes']:,} B, val {label} {full['val'][metric]:.4f}"
        + (f", test {label} {full_test:.4f} (PyTorch)" if full_test is not None else "") + f"; {floor_text}. "
        "Every choice is made on the validation split; the test column is read once afterwards, by running each "
        "artefact's model.onnx with onnxruntime (`ondevice evaluate`)."
        + (f" Test users: a seeded sample of {s['test_users']['sampled']:,} of "
           f"{(full.get('test') or {}).get('users_in_split', 0):,} (seed {s['test_users']['seed']}; --time-limit), "
           "the same for the full model and every artefact." if s.get("test_users") else ""),
        "",
        f"| target | method | budget B | file B | × smaller | val {label} | loss vs full | test {label} | stored as | "
        "search+retrain s | p50 / p99 ms (b=1) | inputs | folder |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in s["runs"]:
        lat = f"{_fmt(r['p50_ms_batch1'], '.3f')} / {_fmt(r.get('p99_ms_batch1'), '.3f')}"
        loss = "—" if r.get("loss") is None else f"{-r['loss']:+.2%}" + (" **below floor**" if r.get("below_floor") else "")
        inputs = r.get("inputs") or {}
        enc = {"raw": "raw values", "ids": "ids"}.get(inputs.get("encoding", ""), "")
        in_cell = (f"**changed**: {enc + ' of ' if enc else ''}{len(inputs['fields'])} of "
                   f"{len(inputs['parent_fields'])} fields" if inputs.get("changed")
                   else f"{enc + ', ' if enc else ''}all fields")
        lines.append(f"| {r['target']} | {r['method']} | {r['budget_bytes']:,} | {r['file_bytes']:,} | "
                     f"{full['file_bytes'] / r['file_bytes']:.1f} | {r['val_metric']:.4f} | {loss} | "
                     f"{_fmt(r.get('test_metric'))} | {_stored_as(r.get('config') or {})} | "
                     f"{r['timings']['search_and_retrain_s']:.1f} | {lat} | {in_cell} | `{r['folder']}` |")
    changed = [r for r in s["runs"] if (r.get("inputs") or {}).get("changed")]
    if changed:
        lines += ["", "## Input changes", ""]
        lines += [f"- `{r['folder']}`: {r['inputs']['text']}" for r in changed]
    for r in (x for x in s["runs"] if x.get("candidates")):
        lines += ["", f"## auto at {r['target']}: candidates", "",
                  f"| method | outcome | file B | val {label} | loss vs full | p99 ms | expected s | seconds | chosen |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for c in r["candidates"]:
            fb = f"{c['file_bytes']:,}" if c.get("file_bytes") is not None else "—"
            loss = "—" if c.get("loss") is None else f"{-c['loss']:+.2%}"
            p99 = "—" if c.get("p99_ms") is None else f"{c['p99_ms']:.3f} (b={c['latency_batch']}, t={c['latency_threads']})"
            outcome = c["outcome"] + (" (stopped at the time limit)" if c.get("stopped_at_limit") else "")
            chosen = ("**yes**" + (f" ({c['chosen_by']})" if c.get("chosen_by") else "")) if c.get("chosen") else ""
            lines.append(f"| {c['method']}{' (raw inputs)' if c.get('inputs') == 'raw' else ''} | {outcome} | {fb} | {_fmt(c.get('val_metric'))} | {loss} | {p99} | "
                         f"{_fmt(c.get('expected_s'), '.1f')} | {_fmt(c.get('seconds'), '.1f')} | {chosen} |")
        if r.get("raw_encoder_reserve"):
            lines += ["", f"File B: the id model each candidate was fitted as, within the budget less the "
                          f"{r['raw_encoder_reserve']:,} B reserved for the raw-feature encoder (its vocabulary "
                          "tables); the shipped artefact adds the encoder to the chosen one."]
    warned = [(r, w) for r in s["runs"] for w in r.get("warnings", [])]
    if warned:
        lines += ["", "## Warnings", ""]
        lines += [f"- {r['target']} / {r['method']}: {w}" for r, w in warned]
    if s["failures"]:
        lines += ["", "## Failures", ""]
        lines += [f"- {f['target']} / {f['method']}: {f['error']}: {f['message']}" for f in s["failures"]]
    return "\n".join(lines) + "\n"


def plot_summary(s: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in s["runs"]}):
        pts = sorted((r["file_bytes"], r["val_metric"]) for r in s["runs"] if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    full = s["full_model"]
    metric = full.get("metric", "auc")
    tried = [(c["file_bytes"], c["val_metric"]) for r in s["runs"] for c in r.get("candidates") or []
             if c.get("file_bytes") is not None and c.get("val_metric") is not None]
    if tried:  # auto's candidates (the chosen ones are the auto line's points, circled)
        ax.scatter([p[0] for p in tried], [p[1] for p in tried], s=14, color="grey", alpha=0.6, label="auto: candidates")
        chosen = [(r["file_bytes"], r["val_metric"]) for r in s["runs"] if r.get("candidates")]
        ax.scatter([p[0] for p in chosen], [p[1] for p in chosen], s=160, facecolors="none", edgecolors="red",
                   linewidths=1.5, label="auto: chosen")
    ax.scatter([full["file_bytes"]], [full["val"][metric]], marker="*", s=120, color="black", label="full model")
    ax.set_xscale("log")
    ax.set_xlabel("artefact bytes (model.onnx)")
    ax.set_ylabel(f"validation {metric_label(metric)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path.name


def load_summary(out_dir: str | Path) -> dict[str, Any]:
    """``OUT/summary.json`` of a finished ``compress`` run."""
    return json.loads((Path(out_dir) / "summary.json").read_text())
