"""Top-K on device with RULE: interaction lists -> BPR-MF -> one elastic model -> a fleet of artefacts.

    python examples/topk_rule_fleet.py --out /tmp/ondevice-topk [--users 2000 --items 3000]
                                       [--train FILE --test FILE] [--fleet budgets/]

Steps: LightGCN-style interaction lists (``user item item ...``; generated with planted
popularity and taste, or your own train/test files) -> ``prepare --format implicit`` ->
train BPR-MF -> ``compress --method rule --fleet DIR``: RULE trains its elastic item table
once, then searches a block configuration for every device profile in DIR (seconds each),
exports, verifies and profiles one artefact per device and writes ``fleet.md``. The
artefact takes the device user's vector and returns the top-k item ids and scores.

Without ``--fleet``, the profiles are written to OUT/profiles: three devices sized from the
full model file (30 %, 50 % and 75 % of it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ondevice.data import generate_topk, prepare
from ondevice.pipeline.compress import compress
from ondevice.pipeline.measure import measure_file_bytes
from ondevice.train import TrainConfig, load_checkpoint, train

DEVICES = (("phone-low", 0.3, "arm64", 1, 1, 10.0), ("phone-mid", 0.5, "arm64", 2, 16, 10.0),
           ("laptop", 0.75, "x86_64", 2, 64, 50.0))


def write_profiles(folder: Path, full_bytes: int) -> Path:
    """Device profiles (budgets/*.toml schema) sized from the full model's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frac, arch, threads, batch, p99 in DEVICES:
        (folder / f"{name}.toml").write_text(
            f'name = "{name}"\ndescription = "{name}: {frac:.0%} of the full item table"\n'
            f'memory_budget = "{int(full_bytes * frac)}B"\narch = "{arch}"\nthreads = {threads}\n'
            f'batch_size = {batch}\np99_latency_ms = {p99}\nruntime_format = "onnx"\n')
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (created)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--train", type=Path, help="your own train.txt (user item item ...) instead of generated data")
    parser.add_argument("--test", type=Path, help="its test.txt")
    parser.add_argument("--fleet", type=Path, help="folder of device profiles [default: three written to OUT/profiles]")
    parser.add_argument("--epochs", type=int, default=10, help="BPR-MF epochs")
    parser.add_argument("--rule-epochs", type=int, default=3, help="RULE's elastic training epochs")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.train is None:
        generate_topk(args.out / "raw", users=args.users, items=args.items, seed=0)
        args.train, args.test = args.out / "raw" / "train.txt", args.out / "raw" / "test.txt"
    info = prepare([args.train, args.test], args.out / "data", format="implicit", split="given", force=True)
    print("prepared rows:", info["rows"])

    config = TrainConfig(model="bprmf", embed_dim=32, lr=5e-3, epochs=args.epochs, batch_size=1024, threads=1)
    result = train(args.out / "data", args.out / "run", config, force=True, quiet=True)
    print(f"full BPR-MF: val Recall@20 {result.val['recall@20']:.4f}, test Recall@20 {result.test['recall@20']:.4f}")

    fleet = args.fleet
    if fleet is None:
        full_bytes, _ = measure_file_bytes(load_checkpoint(args.out / "run").model)
        fleet = write_profiles(args.out / "profiles", full_bytes)
    rule = {"n_blocks": 8, "n_groups": 10, "epochs": args.rule_epochs, "lr": 1e-3, "batch_size": 1024,
            "n_samples": 200, "eval_users": 500}
    summary = compress(args.out / "run", fleet=fleet, methods=["rule"], out_dir=args.out / "fleet", force=True,
                       searcher_params={"rule": rule}, profile_runs=20)
    for row in summary["fleet"]["rows"]:
        lat = row["latency"]
        print(f"{row['device']}: {row['file_bytes']:,} B <= {row['budget_bytes']:,} B, val Recall@20 "
              f"{row['val_metric']:.4f}, p99 {lat['p99_ms']:.3f} ms (target {lat['p99_target_ms']} ms: {lat['verdict']}) "
              f"-> {row['status']}")
    print("fleet report:", args.out / "fleet" / "fleet.md")


if __name__ == "__main__":
    main()
