"""One table of a Hydra multirun's results: ``python scripts/summarize_sweep.py MULTIRUN_DIR``.

Reads every job directory of the sweep (``MULTIRUN_DIR/<n>/``): its command-line overrides from
``.hydra/overrides.yaml`` and its scores from ``metrics.json`` (written by ``picoseg.train``), and
writes ``summary.csv`` and ``summary.md`` into MULTIRUN_DIR, one row per job, sorted by val mIoU
(best first). Columns: job number, one column per overridden key (the sweep's axes), mIoU, pixel
accuracy, mean class accuracy, and with ``--per-class`` every class's IoU. A job without
``metrics.json`` (failed or still running) is listed with its status instead of being dropped.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import yaml


def read_job(job_dir: Path) -> dict:
    """{'job': n, 'overrides': {key: value}, 'metrics': {...} or None} of one job directory."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise FileNotFoundError(f"{job_dir}: no .hydra/overrides.yaml (not a Hydra job directory)")
    overrides = {}
    for item in yaml.safe_load(overrides_file.read_text()) or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return {"job": job_dir.name, "overrides": overrides, "metrics": metrics}


def summarize(sweep_dir: str | Path, per_class: bool = False) -> list[dict]:
    """Rows of the sweep's table (also written as ``summary.csv`` and ``summary.md``)."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job directories (0/, 1/, ...) of a multirun")
    records = [read_job(p) for p in jobs]
    keys = sorted({k for r in records for k in r["overrides"]})
    classes = []
    for r in records:
        for name in (r["metrics"] or {}).get("iou", {}):
            if name not in classes:
                classes.append(name)
    rows = []
    for r in records:
        row = {"job": r["job"], **{k: r["overrides"].get(k, "") for k in keys}}
        m = r["metrics"]
        if m is None:
            row.update(miou="", accuracy="", mean_accuracy="", status="no metrics.json")
        else:
            row.update(
                miou=f"{m['miou']:.4f}",
                accuracy=f"{m.get('accuracy', float('nan')):.4f}",
                mean_accuracy=f"{m.get('mean_accuracy', float('nan')):.4f}",
                status="done",
            )
        if per_class:
            for name in classes:
                value = ((m or {}).get("iou") or {}).get(name)
                row[f"iou/{name}"] = "" if value is None else f"{value:.4f}"
        rows.append(row)
    rows.sort(key=lambda row: -float(row["miou"]) if row["miou"] else float("inf"))
    columns = list(rows[0])
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dir", help="a multirun directory, e.g. outputs/train/multiruns/<time>"
    )
    parser.add_argument("--per-class", action="store_true", help="add every class's IoU")
    args = parser.parse_args()
    summarize(args.sweep_dir, args.per_class)
    print((Path(args.sweep_dir) / "summary.md").read_text(), end="")


if __name__ == "__main__":
    main()
