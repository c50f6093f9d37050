"""``curves.png``: a run's training curves drawn from its CSV log (``csv/metrics.csv``).

Panels, each drawn when the log has its values: the losses (``train/loss``, ``train/ce``,
``train/nce``), PiCo's two terms (``train/nce_pixel``, ``train/nce_region``), the validation mIoU
and the learning rate of every parameter group (``train/lr/<group>``, else ``train/lr``), all
against the optimiser step.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["PANELS", "plot_curves", "read_metrics"]

#: (title, column prefixes or names) per panel; a name ending in "/" takes every column under it.
PANELS = (
    ("losses", ("train/loss", "train/ce", "train/nce")),
    ("contrast terms", ("train/nce_pixel", "train/nce_region")),
    ("validation mIoU", ("val/miou",)),
    ("learning rate", ("train/lr/",)),
)


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every column of a Lightning CSV log as (step, value) pairs, empty cells left out.

    Raises:
        ValueError: the file has no ``step`` column (not a Lightning CSV log).
    """
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "step" not in rows[0]:
        raise ValueError(f"{path}: no 'step' column; expected a Lightning CSVLogger metrics.csv")
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = int(float(row["step"]))
        for key, value in row.items():
            if key in ("step", "epoch") or value in ("", None):
                continue
            number = float(value)
            if math.isfinite(number):
                series.setdefault(key, []).append((step, number))
    return series


def _columns(series: dict[str, list], names: tuple[str, ...]) -> list[str]:
    chosen = []
    for name in names:
        if name.endswith("/"):
            chosen += sorted(k for k in series if k.startswith(name))
        elif name in series:
            chosen.append(name)
    if not chosen and names == ("train/lr/",) and "train/lr" in series:
        chosen = ["train/lr"]  # one parameter group: its rate is train/lr
    return chosen


def plot_curves(metrics_csv: str | Path, path: str | Path) -> list[str]:
    """Draw the panels that ``metrics_csv`` has values for into ``path``.

    Returns:
        The titles of the panels drawn (empty, and no file written, when there is nothing).
    """
    series = read_metrics(metrics_csv)
    panels = [(title, _columns(series, names)) for title, names in PANELS]
    panels = [(title, columns) for title, columns in panels if columns]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, columns) in zip(axes[0], panels, strict=True):
        for column in columns:
            steps, values = zip(*series[column], strict=True)
            marker = "o" if column.startswith("val/") else None
            ax.plot(steps, values, marker=marker, markersize=3, label=column)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [title for title, _ in panels]
