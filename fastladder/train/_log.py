"""The run's log: one CSV of training and evaluation rows, and a PNG of the curves.

``log.csv`` columns: step, epoch, split (``train`` | ``val``), loss, lr, seconds (since the run
began, counting earlier runs before a resume), then the task's scalar metrics (empty on train
rows). ``curves.png``: training loss and the main validation metric against the step.
"""
import csv
import math
import os
from typing import Dict, List, Optional, Sequence

__all__ = ["CSVLog", "plot_curves"]

BASE_COLUMNS = ("step", "epoch", "split", "loss", "lr", "seconds")


class CSVLog:
    """Appends rows to ``path``; keeps them in memory for the curves.

    Args:
        path: the CSV file.
        metric_names: the scalar metrics of evaluation rows (columns after the base ones).
        resume_step: continue an existing log, dropping its rows after this step (written after
            the checkpoint that the run resumes from); None starts a new file.
    """

    def __init__(self, path: str, metric_names: Sequence[str], resume_step: Optional[int] = None):
        self.path = path
        self.columns = list(BASE_COLUMNS) + [m for m in metric_names if m not in BASE_COLUMNS]
        self.rows: List[Dict[str, object]] = []
        if resume_step is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                previous = [row for row in reader if row.get("step") and int(row["step"]) <= resume_step]
            self.rows = [{key: _parse(value) for key, value in row.items() if key in self.columns}
                         for row in previous]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({key: _format(row.get(key)) for key in self.columns})

    def write(self, **row):
        """Appends one row; keys outside the columns raise ValueError (a metric the header lacks)."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"log row has columns {sorted(unknown)} that {self.path} does not have "
                             f"(columns: {self.columns})")
        self.rows.append(dict(row))
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({key: _format(row.get(key)) for key in self.columns})

    def last_seconds(self) -> float:
        """The ``seconds`` of the last row (0 for an empty log): where a resumed run's clock starts."""
        for row in reversed(self.rows):
            if isinstance(row.get("seconds"), (int, float)):
                return float(row["seconds"])
        return 0.0


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _parse(value: str):
    if value is None or value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def plot_curves(rows: Sequence[Dict[str, object]], path: str, metric: str, title: str = "",
                higher_is_better: bool = True):
    """Writes a PNG: training loss vs step (left), ``metric`` of the val rows vs step (right),
    its best value annotated.

    matplotlib is imported here, with the Agg backend (no display needed).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    def series(split, key):
        points = [(row["step"], row[key]) for row in rows
                  if row.get("split") == split and isinstance(row.get(key), (int, float))
                  and not math.isnan(row[key])]
        return [p[0] for p in points], [p[1] for p in points]

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    steps, losses = series("train", "loss")
    loss_axis.plot(steps, losses, linewidth=1, label="train")
    val_steps, val_losses = series("val", "loss")
    if val_steps:
        loss_axis.plot(val_steps, val_losses, "o-", linewidth=1, label="val")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend()
    steps, values = series("val", metric)
    metric_axis.plot(steps, values, "o-", color="tab:green")
    if values:
        pick = max if higher_is_better else min
        best = pick(range(len(values)), key=values.__getitem__)
        metric_axis.annotate(f"{values[best]:.4g}", (steps[best], values[best]), textcoords="offset points",
                             xytext=(0, 6), ha="center")
    metric_axis.margins(y=0.2)
    metric_axis.set_xlabel("step")
    metric_axis.set_ylabel(f"val {metric}")
    metric_axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
