"""The curves of one bench.scales run as PNG files, for docs/performance.md beside its tables.

Why apart: matplotlib is a bench-only dependency (`pip install -e '.[bench]'`); nothing else
imports it, and the figures drawn are exactly those of the run's JSON (bench.scales.figures),
so a plot can be redrawn from docs/performance-backup.json alone:

    python -m bench.plots docs/performance-backup.json docs/performance
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from bench.scales import NIGHTS  # noqa: E402

LABELS = {"full": "full night", "incr": "incremental night", "upload": "upload during the pre-pass"}


def _series(per_run: dict, names: list[str], key: str) -> tuple[list[float], list]:
    xs, ys = [], []
    for name in names:
        f = per_run[name]
        if f.get(key) is not None:
            xs.append((f["db_mb"] + f["media_mb"]) / 1000)
            ys.append(f[key])
    return xs, ys


def _split(figures: dict) -> tuple[list[str], list[str]]:
    """The byte scales (a curve) and the many-files runs (single points)."""
    names = figures["runs"]
    return [n for n in names if "+" not in n], [n for n in names if "+" in n]


def _axes(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("dataset (database + media), GB")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _points(ax, per_run: dict, many: list[str], key: str, color: str) -> None:
    for name in many:
        f = per_run[name]
        if f.get(key) is not None:
            ax.scatter([(f["db_mb"] + f["media_mb"]) / 1000], [f[key]], marker="D", color=color, zorder=3)
            ax.annotate(f"{f['media_files']:,} files", ((f["db_mb"] + f["media_mb"]) / 1000, f[key]),
                        textcoords="offset points", xytext=(6, 4), fontsize=7, color=color)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _curve(ax, figures: dict, key: str, color: str, text: str, style: str = "-") -> None:
    """One figure over the byte scales, the many-files runs as points beside it."""
    scales, many = _split(figures)
    ax.plot(*_series(figures["per_run"], scales, key), style, color=color, marker="o", label=text)
    if style == "-":
        _points(ax, figures["per_run"], many, key, color)


COLORS = ("tab:blue", "tab:orange", "tab:green")  # one per night


def walls(figures: dict, out: Path) -> Path:
    fig, ax = _axes("Backup wall: old procedure (dashed) and taiga-backup", "seconds")
    for night, color in zip(NIGHTS, COLORS):
        _curve(ax, figures, f"old_{night}_wall_s", color, f"old: {LABELS[night]}", "--")
        _curve(ax, figures, f"{night}_wall_s", color, f"taiga-backup: {LABELS[night]}")
    ax.legend(fontsize=7)
    return _save(fig, out / "backup-wall.png")


def downtime(figures: dict, out: Path) -> Path:
    fig, ax = _axes("App downtime per night", "seconds the app is down")
    _curve(ax, figures, "old_full_downtime_s", "tab:gray", "old procedure: full night", "--")
    for night, color in zip(NIGHTS, COLORS):
        _curve(ax, figures, f"{night}_downtime_s", color, f"taiga-backup: {LABELS[night]}")
    ax.axhline(figures["targets"]["upload_downtime_s"], color="tab:red", lw=0.8, ls=":", label="1.5 s")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(fig, out / "backup-downtime.png")


def worker_costs(figures: dict, out: Path) -> Path:
    """The worker's peak RSS and the media tree's two looks (the costs that grow with files)."""
    fig, ax = _axes("The worker: peak RSS (left) and the media tree's looks (right)", "worker peak RSS, MB")
    _curve(ax, figures, "worker_rss_mb", "tab:purple", "peak RSS")
    ax.axhline(figures["targets"]["worker_rss_mb"], color="tab:purple", lw=0.8, ls=":")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.set_ylabel("seconds per look")
    for key, text, color in (("look_first_s", "look before the pre-pass (app up)", "tab:olive"),
                             ("look_quiesced_s", "look with the app down", "tab:brown")):
        _curve(right, figures, key, color, text)
    right.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=7, loc="center right")
    return _save(fig, out / "backup-worker.png")


def draw(result: dict, out: Path) -> list[Path]:
    """Every curve of a bench.scales result; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    figures = result["figures"]
    return [walls(figures, out), downtime(figures, out), worker_costs(figures, out)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for path in draw(json.loads(Path(argv[0]).read_text()), Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
