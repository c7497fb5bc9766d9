"""The backup's curves in one run: does the app's downtime stay flat, and the nights' wall stay
below the old procedure's, while the data grow - in bytes (the scales) and in files (a media tree
of many small files)?

    python -m bench.scales --scales 0.25,1.0,4.0 --small-files 500000 [--repeat 3] \
        [--json docs/performance-backup.json] [--plots docs/performance]

Runs bench.run once per scale and once more for the many-files tree (full nights, the incremental
night after a day of changes, the night with an upload during the pre-pass; the old procedure and
taiga-backup alternately, on the same data), then puts the figures side by side (their targets:
TARGETS, docs/performance.md): wall and downtime of every night against the old procedure's,
how much the downtime grows per second the old backup grows from the smallest to the largest
scale, bookkeeping, the media tree's two looks, worker RSS. Prints a markdown table, writes every
raw number (each bench.run result included) as one JSON file and draws the curves as PNG files
(bench.plots, matplotlib: the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.experiments import MEDIA_EXPERIMENTS  # noqa: E402

VARIANT = "tb-plain"
TARGETS = {
    "downtime_vs_old_backup": 0.25,     # at the largest scale
    "downtime_growth_per_old_second": 0.15,
    "incr_downtime_s": 4.0,             # at every scale
    "upload_downtime_s": 1.5,           # at every scale
    "full_wall_vs_old": 0.9,
    "incr_wall_vs_old": 0.7,            # at scale 1.0
    "bookkeeping_s": 1.0,
    "worker_rss_mb": 300.0,
}
NIGHTS = tuple(p for p in report.PHASES if p != "restore")  # the backup nights bench.run measures


def label(scale: float, small_files: int = 0) -> str:
    """A run's name in the figures: its scale, and the small files added to its media."""
    return f"{scale:g}" + (f"+{small_files}files" if small_files else "")


def one_run(scale: float, args, out: Path, small_files: int = 0, experiments: bool = False) -> dict:
    argv = ["--scale", str(scale), "--formats", "plain", "--phases", ",".join(NIGHTS), "--repeat", str(args.repeat),
            "--out", str(out), "--pod-start-delay", str(args.pod_delay), "--pod-stop-delay", str(args.pod_delay),
            "--small-files", str(small_files),
            "--experiments", args.experiments if experiments else "none",
            "--media-experiments", args.media_experiments if experiments else "none"]
    before = set(out.glob("results-scale*.json"))
    subprocess.run([sys.executable, "-m", "bench.run", *argv], cwd=str(ROOT), check=True)
    new = set(out.glob(f"results-scale{scale:g}-*.json")) - before
    return json.loads(max(new, key=lambda p: p.stat().st_mtime).read_text())


def _get(summary: dict, variant: str, phase: str, key: str):
    return ((summary.get(variant) or {}).get(phase) or {}).get(key)


def run_figures(result: dict) -> dict:
    """One run's figures: every night of both pipelines, and taiga-backup's against the old."""
    s, ds = result["summary"], result["dataset"]
    fig = {"scale": result["args"]["scale"], "db_mb": round(ds["db_bytes"] / 1e6), "media_mb": round(ds["media_bytes"] / 1e6),
           "media_files": ds["media_files"], "ok": bool(s.get(VARIANT)) and bool(s.get("old"))}
    for night in NIGHTS:
        old_wall, wall = _get(s, "old", night, "wall_s"), _get(s, VARIANT, night, "wall_s")
        fig.update({f"old_{night}_wall_s": old_wall, f"old_{night}_downtime_s": _get(s, "old", night, "downtime_s"),
                    f"{night}_wall_s": wall, f"{night}_wall_vs_old": report.ratio(wall, old_wall),
                    f"{night}_downtime_s": _get(s, VARIANT, night, "downtime_s"),
                    f"{night}_quiesced_passes": _get(s, VARIANT, night, "quiesced_passes")})
    fig.update({
        "downtime_range_s": _get(s, VARIANT, "full", "downtime_range_s"),
        "downtime_vs_old_backup": report.ratio(fig["full_downtime_s"], fig["old_full_wall_s"]),
        "bookkeeping_s": _get(s, VARIANT, "full", "bookkeeping_s"),
        "preflight_s": _get(s, VARIANT, "full", "preflight_s"),
        "look_first_s": _get(s, VARIANT, "full", "look_first_s"),
        "look_quiesced_s": _get(s, VARIANT, "full", "look_quiesced_s"),
        "worker_rss_mb": max(filter(None, [_get(s, VARIANT, n, "rss_worker_mb") for n in NIGHTS]), default=None),
    })
    return fig


def figures(by_run: dict[str, dict]) -> dict:
    """Every run's figures, and the downtime's growth from the smallest to the largest scale
    (runs without added small files)."""
    per_run = {name: run_figures(r) for name, r in by_run.items()}
    plain = sorted((f for name, f in per_run.items() if "+" not in name), key=lambda f: f["scale"])
    growth = None
    if len(plain) >= 2:
        lo, hi = plain[0], plain[-1]
        if None not in (lo["old_full_wall_s"], hi["old_full_wall_s"], lo["full_downtime_s"], hi["full_downtime_s"]) \
                and hi["old_full_wall_s"] != lo["old_full_wall_s"]:
            growth = round((hi["full_downtime_s"] - lo["full_downtime_s"])
                           / (hi["old_full_wall_s"] - lo["old_full_wall_s"]), 3)
    return {"runs": list(per_run), "per_run": per_run, "downtime_growth_per_old_second": growth, "targets": TARGETS}


ROWS = [  # label, target, key, unit (the table's rows, in order)
    ("dataset: database / media", "", None, ""),
    ("old procedure: full backup wall / downtime", "", ("old_full_wall_s", "old_full_downtime_s"), " s"),
    ("taiga-backup: full backup wall", "", "full_wall_s", " s"),
    ("  … vs old", "≤ 0.9×", "full_wall_vs_old", "×"),
    ("taiga-backup: app downtime (full)", "", "full_downtime_s", " s"),
    ("  … vs the old backup's time", "≤ 0.25× at the largest", "downtime_vs_old_backup", "×"),
    ("old procedure: incremental night wall / downtime", "", ("old_incr_wall_s", "old_incr_downtime_s"), " s"),
    ("taiga-backup: incremental night wall", "", "incr_wall_s", " s"),
    ("  … vs old", "≤ 0.7× at 1.0", "incr_wall_vs_old", "×"),
    ("taiga-backup: app downtime (incremental night)", "≤ 4 s", "incr_downtime_s", " s"),
    ("old procedure: upload night wall / downtime", "", ("old_upload_wall_s", "old_upload_downtime_s"), " s"),
    ("taiga-backup: upload night wall (an upload during the pre-pass)", "", "upload_wall_s", " s"),
    ("  … vs old", "", "upload_wall_vs_old", "×"),
    ("taiga-backup: app downtime (upload night)", "≤ 1.5 s", "upload_downtime_s", " s"),
    ("  quiesced restic passes (full, incr, upload nights)", "0",
     ("full_quiesced_passes", "incr_quiesced_passes", "upload_quiesced_passes"), ""),
    ("bookkeeping (wall outside quiesce, data steps, resume)", "≤ 1 s", "bookkeeping_s", " s"),
    ("  of which preflight", "", "preflight_s", " s"),
    ("media tree look: before the pre-pass / with the app down", "", ("look_first_s", "look_quiesced_s"), " s"),
    ("worker peak RSS (all nights)", "≤ 300 MB, flat", "worker_rss_mb", " MB"),
]


def _cell(f: dict, key, unit: str) -> str:
    if key is None:
        return f"{f['db_mb']} MB / {f['media_mb']} MB in {f['media_files']} files"
    if isinstance(key, tuple):
        return " / ".join(report.fmt(f.get(k), unit, 2 if k.startswith("look") else 1) for k in key)
    return report.fmt(f.get(key), unit, 2 if unit == "×" or key == "bookkeeping_s" else 1)


def markdown(result: dict) -> str:
    f = result["figures"]
    names = f["runs"]
    lines = ["| figure | target | " + " | ".join(f"scale {n}" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for text, target, key, unit in ROWS:
        lines.append(f"| {text} | {target} | " + " | ".join(_cell(f["per_run"][n], key, unit) for n in names) + " |")
    lines.append(f"| downtime growth per second of old backup growth (smallest → largest scale) | ≤ 0.15 s/s | "
                 f"{report.fmt(f['downtime_growth_per_old_second'], ' s/s', 3)} |" + " |" * (len(names) - 1))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scales", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="0.25,1.0,4.0")
    ap.add_argument("--small-files", type=int, default=500_000,
                    help="one more run whose media have this many small files added (0: none)")
    ap.add_argument("--small-files-scale", type=float, default=0.25, help="the scale of that run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pod-delay", type=float, default=1.0, help="pod start and stop delay in the API double")
    ap.add_argument("--experiments", default="none", help="bench.run's format experiments, at the largest scale")
    ap.add_argument("--media-experiments", default="none",
                    help=f"restic's knobs on the media at the largest scale, among {','.join(MEDIA_EXPERIMENTS)}")
    ap.add_argument("--out", default=None, help="where bench.run writes (default: a temporary directory)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "performance-backup.json"))
    ap.add_argument("--plots", default=str(ROOT / "docs" / "performance"),
                    help="directory for the PNG curves ('' for none)")
    args = ap.parse_args(argv)
    args.scales = sorted(float(x) for x in args.scales.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="tb-scales-"))
    out.mkdir(parents=True, exist_ok=True)
    by_run = {label(scale): one_run(scale, args, out, experiments=scale == max(args.scales)) for scale in args.scales}
    if args.small_files:
        by_run[label(args.small_files_scale, args.small_files)] = one_run(args.small_files_scale, args, out,
                                                                          small_files=args.small_files)
    result = {"args": {k: v for k, v in vars(args).items()}, "figures": figures(by_run), "runs": by_run}
    result["markdown"] = markdown(result)
    Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    print(result["markdown"])
    if args.plots:
        from bench import plots  # matplotlib only here: the bench's extra
        for path in plots.draw(result, Path(args.plots)):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
