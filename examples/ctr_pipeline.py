"""End-to-end CTR pipeline with the library API (the CLI commands call the same functions).

    python examples/ctr_pipeline.py --out /tmp/ondevice-example [--rows 50000] [--criteo FILE]

Steps: a Criteo-format file (generated with a planted model, or your own Kaggle DAC file via
--criteo) -> prepare -> train DeepFM -> compress to a budget with two methods -> verify and
profile each artefact -> print the summary table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ondevice.data import generate_ctr, prepare
from ondevice.export.raw import raw_encoder_bytes
from ondevice.pipeline.compress import compress
from ondevice.train import TrainConfig, load_checkpoint, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (created)")
    parser.add_argument("--rows", type=int, default=50_000, help="synthetic rows when --criteo is not given")
    parser.add_argument("--criteo", type=Path, help="a Criteo Kaggle DAC TSV file to use instead of synthetic data")
    parser.add_argument("--budget", help="artefact byte budget, e.g. 300KB or 2MiB [default: half the full model]")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.criteo
    if raw is None:
        raw = args.out / "train.tsv"
        truth = generate_ctr(raw, args.rows, vocab=1000, seed=0)
        print("planted important fields:", [f["field"] for f in truth["important_fields"]])

    info = prepare(raw, args.out / "data", format="criteo", min_count=2, force=True)
    print("prepared rows:", info["rows"])

    config = TrainConfig(model="deepfm", embed_dim=8, mlp_dims=[64, 32], epochs=args.epochs, threads=1)
    result = train(args.out / "data", args.out / "run", config, force=True, quiet=True)
    print(f"full DeepFM: val AUC {result.val['auc']:.4f}, test AUC {result.test['auc']:.4f}")

    budget = args.budget
    if budget is None:  # half the full model's parameter bytes, plus the vocabulary the raw-feature artefact ships
        ckpt = load_checkpoint(args.out / "run")
        budget = int(0.5 * sum(t.numel() * t.element_size() for t in ckpt.model.state_dict().values()))
        budget += raw_encoder_bytes(ckpt.schema)
    summary = compress(args.out / "run", budgets=[budget], methods=["int8", "uniform"],
                       out_dir=args.out / "compressed", force=True, epochs=1)
    full = summary["full_model"]
    print(f"full model: {full['file_bytes']:,} B")
    for run in summary["runs"]:
        print(f"{run['folder']}: {run['file_bytes']:,} B <= {run['budget_bytes']:,} B, val AUC {run['val_metric']:.4f},"
              f" ORT-vs-PyTorch max diff {run['verify_max_abs_diff']}")
    print("summary:", args.out / "compressed" / "summary.md")


if __name__ == "__main__":
    main()
