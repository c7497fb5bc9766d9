"""The backup's figures at two scales in one run: does the app's downtime stay flat while the old
procedure's backup time grows with the data?

    python -m bench.scales --scales 0.25,1.0 [--repeat 3] [--json docs/performance-backup.json]

Runs bench.run once per scale (full night, then an incremental night; the old procedure and
taiga-backup alternately, on the same data), then puts the backup's figures side by side (their
targets: docs/performance.md): downtime against the old procedure's whole backup at the larger
scale, how much the downtime grows per second the old backup grows between the scales, the
incremental night's downtime, full-backup wall against the old one, bookkeeping, worker RSS at both
scales. Prints a markdown table and writes every raw number (both bench.run results included) as one
JSON file.
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
    "downtime_vs_old_backup": 0.25,     # at the larger scale
    "downtime_growth_per_old_second": 0.15,
    "incr_downtime_s": 4.0,             # at the larger scale
    "full_wall_vs_old": 0.9,
    "bookkeeping_s": 1.0,
    "worker_rss_mb": 200.0,
}


def one_scale(scale: float, args, out: Path) -> dict:
    argv = ["--scale", str(scale), "--formats", "plain", "--phases", "full,incr", "--repeat", str(args.repeat),
            "--out", str(out), "--pod-start-delay", str(args.pod_delay), "--pod-stop-delay", str(args.pod_delay),
            "--experiments", args.experiments if scale == max(args.scales) else "none",
            "--media-experiments", args.media_experiments if scale == max(args.scales) else "none"]
    subprocess.run([sys.executable, "-m", "bench.run", *argv], cwd=str(ROOT), check=True)
    newest = max(out.glob(f"results-scale{scale:g}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())


def figures(by_scale: dict) -> dict:
    small, big = sorted(by_scale)
    s, b = by_scale[small]["summary"], by_scale[big]["summary"]

    def get(summary, variant, phase, key):
        return ((summary.get(variant) or {}).get(phase) or {}).get(key)

    old_small, old_big = get(s, "old", "full", "wall_s"), get(b, "old", "full", "wall_s")
    dt_small, dt_big = get(s, VARIANT, "full", "downtime_s"), get(b, VARIANT, "full", "downtime_s")
    growth = None
    if None not in (old_small, old_big, dt_small, dt_big) and old_big != old_small:
        growth = round((dt_big - dt_small) / (old_big - old_small), 3)
    per_scale = {}
    for scale, summary in ((small, s), (big, b)):
        tb, old = summary.get(VARIANT) or {}, summary.get("old") or {}
        per_scale[str(scale)] = {
            "old_full_wall_s": get(summary, "old", "full", "wall_s"),
            "old_full_downtime_s": get(summary, "old", "full", "downtime_s"),
            "full_wall_s": get(summary, VARIANT, "full", "wall_s"),
            "full_wall_vs_old": report.ratio(get(summary, VARIANT, "full", "wall_s"), get(summary, "old", "full", "wall_s")),
            "downtime_s": get(summary, VARIANT, "full", "downtime_s"),
            "downtime_range_s": get(summary, VARIANT, "full", "downtime_range_s"),
            "downtime_vs_old_backup": report.ratio(get(summary, VARIANT, "full", "downtime_s"),
                                                      get(summary, "old", "full", "wall_s")),
            "old_incr_wall_s": get(summary, "old", "incr", "wall_s"),
            "old_incr_downtime_s": get(summary, "old", "incr", "downtime_s"),
            "incr_wall_s": get(summary, VARIANT, "incr", "wall_s"),
            "incr_downtime_s": get(summary, VARIANT, "incr", "downtime_s"),
            "bookkeeping_s": get(summary, VARIANT, "full", "bookkeeping_s"),
            "preflight_s": get(summary, VARIANT, "full", "preflight_s"),
            "worker_rss_mb": max(filter(None, [get(summary, VARIANT, p, "rss_worker_mb") for p in ("full", "incr")]),
                                 default=None),
            "ok": bool(tb) and bool(old),
        }
    return {"small_scale": small, "large_scale": big, "per_scale": per_scale,
            "downtime_growth_per_old_second": growth, "targets": TARGETS}


def markdown(result: dict) -> str:
    f = result["figures"]
    small, big = str(f["small_scale"]), str(f["large_scale"])
    p = f["per_scale"]

    def cell(scale, key, unit="", nd=1):
        return report.fmt(p[scale].get(key), unit, nd)

    rows = [
        ("old procedure: full backup wall", "", "old_full_wall_s", " s"),
        ("taiga-backup: full backup wall", "", "full_wall_s", " s"),
        ("  … vs old", "≤ 0.9×", "full_wall_vs_old", "×"),
        ("old procedure: app downtime (full)", "", "old_full_downtime_s", " s"),
        ("taiga-backup: app downtime (full)", "", "downtime_s", " s"),
        ("  … vs the old backup's time", f"≤ 0.25× at {big}", "downtime_vs_old_backup", "×"),
        ("old procedure: incremental night wall / downtime", "", "old_incr_wall_s", " s"),
        ("taiga-backup: incremental night wall", "", "incr_wall_s", " s"),
        ("taiga-backup: app downtime (incremental night)", f"≤ 4 s at {big}", "incr_downtime_s", " s"),
        ("bookkeeping (wall outside quiesce, data steps, resume)", "≤ 1 s", "bookkeeping_s", " s"),
        ("  of which preflight", "", "preflight_s", " s"),
        ("worker peak RSS (full, incr)", "≤ 200 MB, flat", "worker_rss_mb", " MB"),
    ]
    lines = [f"| figure | target | scale {small} | scale {big} |", "|---|---|---|---|"]
    for label, target, key, unit in rows:
        nd = 2 if unit in ("×",) or key == "bookkeeping_s" else 1
        extra = ""
        if key == "old_incr_wall_s":
            lines.append(f"| {label} | {target} | {cell(small, key, unit)} / {cell(small, 'old_incr_downtime_s', unit)} "
                         f"| {cell(big, key, unit)} / {cell(big, 'old_incr_downtime_s', unit)} |")
            continue
        lines.append(f"| {label} | {target} | {cell(small, key, unit, nd)}{extra} | {cell(big, key, unit, nd)} |")
    g = f["downtime_growth_per_old_second"]
    lines.append(f"| downtime growth per second of old backup growth ({small} → {big}) | ≤ 0.15 s/s | "
                 f"{report.fmt(g, ' s/s', 3)} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scales", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="0.25,1.0")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pod-delay", type=float, default=1.0, help="pod start and stop delay in the API double")
    ap.add_argument("--experiments", default="plain,plain-zoff,plain-pack64")
    ap.add_argument("--media-experiments", default=",".join(MEDIA_EXPERIMENTS))
    ap.add_argument("--out", default=None, help="where bench.run writes (default: a temporary directory)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "performance-backup.json"))
    args = ap.parse_args(argv)
    args.scales = sorted(float(x) for x in args.scales.split(","))
    out = Path(args.out or tempfile.mkdtemp(prefix="tb-scales-"))
    out.mkdir(parents=True, exist_ok=True)
    by_scale = {scale: one_scale(scale, args, out) for scale in args.scales}
    result = {"args": {k: v for k, v in vars(args).items()}, "figures": figures(by_scale),
              "runs": {str(k): v for k, v in by_scale.items()}}
    result["markdown"] = markdown(result)
    Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    print(result["markdown"])
    for scale, r in by_scale.items():
        print(report.markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
