"""The run's report: medians and ratios per variant and phase (their targets: docs/performance.md),
the markdown tables, and the JSON + markdown files in --out.

Why apart from the measuring: the arithmetic is checked without servers
(tests/integration/test_bench_run.py), and bench.scales reads these summaries back from the JSON.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from bench import MB, log
from bench.experiments import MEDIA_EXPERIMENTS


def fmt(v, unit="", nd=1):
    """One table cell: "–" for no figure, floats to `nd` decimals."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}"
    return f"{v}{unit}"


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    return values[n // 2] if n % 2 else round((values[n // 2 - 1] + values[n // 2]) / 2, 3)


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return round(a / b, 2)


# ------------------------------------------------------------------------------------ the summary

PHASES = ("full", "incr", "upload", "restore")  # bench.run's phases, in the order it runs them


def _phase_summary(rs: list[dict], phase: str) -> dict:
    """Medians over one variant's repeats of one phase; peak RSS is the largest of them."""
    return {
        "n": len(rs),
        "wall_s": _median([r["wall_s"] for r in rs]),
        "wall_range_s": [min(r["wall_s"] for r in rs), max(r["wall_s"] for r in rs)],
        "downtime_range_s": [min(r.get("downtime_s") or 0 for r in rs), max(r.get("downtime_s") or 0 for r in rs)],
        "worker_cpu_s": _median([r.get("worker_cpu_s") for r in rs]),
        "downtime_s": _median([r.get("downtime_s") for r in rs]),
        "queue_to_start_s": _median([r.get("queue_to_start_s") for r in rs]),
        "cli_wall_s": _median([r.get("cli_wall_s") for r in rs]),
        "bookkeeping_s": _median([r.get("bookkeeping_s") for r in rs]),
        "preflight_s": _median([(r.get("steps") or {}).get("preflight") for r in rs]),
        "repo_growth": _median([(r.get("repo_growth") or {}).get("total") for r in rs]),
        "data_added": _median([(r.get("data_added") or {}).get("total") for r in rs]),
        "rss_worker_mb": max([(r.get("rss_mb") or {}).get("worker (python)") or 0 for r in rs]) or None,
        "rss_restic_mb": max([(r.get("rss_mb") or {}).get("restic") or 0 for r in rs]) or None,
        "rss_pg_dump_mb": max([(r.get("rss_mb") or {}).get("pg_dump") or 0 for r in rs]) or None,
        "verified": all(r.get("verified", True) for r in rs) if phase == "restore" else None,
        # the media tree's looks: before the pre-pass (app up) and the last one (app down)
        "look_first_s": _median([(r.get("media_looks_s") or [None])[0] for r in rs]),
        "look_quiesced_s": _median([(r.get("media_looks_s") or [None])[-1] for r in rs]),
        "quiesced_passes": sum(1 for r in rs if r.get("quiesced_pass")) if rs[0].get("pipeline") == "taiga-backup"
        else None,
    }


def _ratios(s: dict, old: dict, dataset_bytes: int) -> dict:
    """One taiga-backup variant against the old pipeline (and its incremental night against its full)."""
    full, incr, rest = s.get("full", {}), s.get("incr", {}), s.get("restore", {})
    return {
        "full_vs_old": ratio(full.get("wall_s"), old.get("full", {}).get("wall_s")),
        "downtime_vs_old_downtime": ratio(full.get("downtime_s"), old.get("full", {}).get("downtime_s")),
        "downtime_vs_old_backup": ratio(full.get("downtime_s"), old.get("full", {}).get("wall_s")),
        "incr_vs_old_incr": ratio(incr.get("wall_s"), old.get("incr", {}).get("wall_s")),
        "incr_vs_own_full": ratio(incr.get("wall_s"), full.get("wall_s")),
        "incr_downtime_vs_old": ratio(incr.get("downtime_s"), old.get("incr", {}).get("downtime_s")),
        "incr_added_vs_old": ratio(incr.get("data_added"), old.get("incr", {}).get("data_added")),
        "incr_growth_vs_old": ratio(incr.get("repo_growth"), old.get("incr", {}).get("repo_growth")),
        "incr_added_pct_of_dataset": round(100 * incr["data_added"] / dataset_bytes, 2)
        if incr.get("data_added") is not None else None,
        "incr_growth_pct_of_dataset": round(100 * incr["repo_growth"] / dataset_bytes, 2)
        if incr.get("repo_growth") is not None else None,
        "upload_vs_old": ratio(s.get("upload", {}).get("wall_s"), old.get("upload", {}).get("wall_s")),
        "restore_vs_old": ratio(rest.get("wall_s"), old.get("restore", {}).get("wall_s")),
        "restore_downtime_vs_old": ratio(rest.get("downtime_s"), old.get("restore", {}).get("downtime_s")),
    }


def summarise(results: dict) -> dict:
    """Per variant and phase: medians over repeats, and the ratios against their targets."""
    runs = [r for r in results["runs"] if not r.get("error")]
    variants = list(dict.fromkeys(r["variant"] for r in results["runs"]))
    ds = results["dataset"]
    dataset_bytes = ds["db_bytes"] + ds["media_bytes"]
    summary = {}
    for v in variants:
        s = {}
        for phase in PHASES:
            rs = [r for r in runs if r["variant"] == v and r["phase"] == phase]
            if rs:
                s[phase] = _phase_summary(rs, phase)
        summary[v] = s
    old = summary.get("old", {})
    for v, s in summary.items():
        if v != "old":
            s["ratios"] = _ratios(s, old, dataset_bytes)
    if old.get("incr", {}).get("repo_growth") is not None:
        old["incr_growth_pct_of_dataset"] = round(100 * old["incr"]["repo_growth"] / dataset_bytes, 2)
    if old.get("incr", {}).get("data_added") is not None:
        old["incr_added_pct_of_dataset"] = round(100 * old["incr"]["data_added"] / dataset_bytes, 2)
    return summary


# ------------------------------------------------------------------------------------ markdown


def _header(results: dict) -> list[str]:
    m, ds = results["machine"], results["dataset"]
    return [
        f"### taiga-backup vs the old procedure — scale {results['args']['scale']}",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; {m['restic']}; {m['pg_dump']}; "
        f"server {m['postgres_server']}; Python {m['python']}, Celery {m['celery']}; git {m['git']}. "
        f"Load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}.",
        f"Dataset: database {ds['db_bytes'] / MB:.0f} MB (pg_database_size), media {ds['media_bytes'] / MB:.0f} MB "
        f"in {ds['media_files']} files; a day of changes: {results.get('changes_summary', '–')}. "
        f"Pod start/stop delay in the API double: {results['args']['pod_start_delay']} s / "
        f"{results['args']['pod_stop_delay']} s. Full backups: median of {results['args']['repeat']}.",
        "",
    ]


def _g(phase, key):
    return lambda s: (s.get(phase) or {}).get(key)


def _r(key):
    return lambda s: (s.get("ratios") or {}).get(key)


def _mb(phase, key):
    return lambda s: ((s.get(phase) or {}).get(key) or 0) / MB if (s.get(phase) or {}).get(key) is not None else None


def _with_range(phase, key):
    def get(s):
        p = s.get(phase) or {}
        if p.get(key) is None:
            return None
        lo, hi = p.get(key.replace("_s", "_range_s"), [None, None])
        return f"{p[key]:.1f} s" + (f" ({lo:.1f}–{hi:.1f})" if p.get("n", 1) > 1 else "")
    return get


def _queue_to_start(s):
    q = _g("full", "queue_to_start_s")(s)
    return max(0.0, q) if q is not None else None


def _metrics_table(summary: dict) -> list[str]:
    """One row per metric: its target, the old pipeline's figure, each variant's and its ratio."""
    variants = [v for v in summary if v != "old"]
    old = summary.get("old", {})
    lines = ["| metric | target | old | " + " | ".join(f"{v} | ratio" for v in variants) + " |",
             "|" + "---|" * (3 + 2 * len(variants))]

    def row(label, target, getter, rgetter=None, unit=" s", nd=1):
        cells = [label, target, fmt(getter(old), unit, nd) if old else "–"]
        for v in variants:
            cells.append(fmt(getter(summary[v]), unit, nd))
            cells.append(fmt(rgetter(summary[v]) if rgetter else None, "×", 2))
        lines.append("| " + " | ".join(cells) + " |")

    def pct_row(label, target, key, pct_key):
        cells = [label, target, (f"{fmt(_mb('incr', key)(old), ' MB')} ({fmt(old.get(pct_key), ' %', 2)})"
                                 if old else "–")]
        for v in variants:
            cells.append(fmt(_mb("incr", key)(summary[v]), " MB"))
            cells.append(fmt(_r(pct_key)(summary[v]), " % of dataset", 2))
        lines.append("| " + " | ".join(cells) + " |")

    def none(s):
        return None

    g, r = _g, _r
    row("full backup wall (median, min–max)", "≤ 0.9× old", _with_range("full", "wall_s"), r("full_vs_old"), unit="")
    row("app downtime (backup)", "≤ 0.25× old backup", _with_range("full", "downtime_s"),
        r("downtime_vs_old_backup"), unit="")
    row("  … vs old downtime", "", none, r("downtime_vs_old_downtime"))
    row("incremental night wall", "≤ 0.3× own full", g("incr", "wall_s"), r("incr_vs_own_full"))
    row("  … vs old incremental", "", none, r("incr_vs_old_incr"))
    row("app downtime (incremental night)", "≤ 4 s", g("incr", "downtime_s"), r("incr_downtime_vs_old"))
    pct_row("incremental data_added (restic, before compression)", "< 5 % of dataset", "data_added",
            "incr_added_pct_of_dataset")
    pct_row("incremental repo growth on disk", "< 5 % of dataset", "repo_growth", "incr_growth_pct_of_dataset")
    row("  … data_added vs old", "", none, r("incr_added_vs_old"))
    row("  … repo growth vs old", "", none, r("incr_growth_vs_old"))
    row("full backup repo size on disk", "", _mb("full", "repo_growth"), None, unit=" MB")
    row("upload night wall (an upload during the pre-pass)", "", g("upload", "wall_s"), r("upload_vs_old"))
    row("app downtime (upload night)", "≤ 1.5 s", g("upload", "downtime_s"))
    row("media tree look before the pre-pass (full)", "", g("full", "look_first_s"), unit=" s", nd=2)
    row("media tree look with the app down (full)", "", g("full", "look_quiesced_s"), unit=" s", nd=2)
    row("restore wall", "≤ 0.7× old", g("restore", "wall_s"), r("restore_vs_old"))
    row("app downtime (restore)", "", g("restore", "downtime_s"), r("restore_downtime_vs_old"))
    row("queue → start (task-sent → task-started)", "≤ 2 s", _queue_to_start, unit=" s", nd=3)
    row("CLI `backup --wait` wall (incl. Python start, 0.5 s polling)", "", g("full", "cli_wall_s"))
    row("bookkeeping (wall not covered by quiesce, data steps, resume)", "≤ 1 s", g("full", "bookkeeping_s"),
        unit=" s", nd=2)
    row("  of which preflight", "", g("full", "preflight_s"), unit=" s", nd=2)
    for phase in PHASES:
        row(f"worker peak RSS ({phase})", "≤ 300 MB", g(phase, "rss_worker_mb"), unit=" MB")
    row("worker CPU time per backup job", "", g("full", "worker_cpu_s"), unit=" s", nd=2)
    row("restic peak RSS (full)", "", g("full", "rss_restic_mb"), unit=" MB")
    row("pg_dump peak RSS (full)", "", g("full", "rss_pg_dump_mb"), unit=" MB")
    return lines


def _media_table(media: list[dict]) -> list[str]:
    lines = ["", "#### restic knobs on the media alone (full pass, then a second pass with it as parent)", "",
             "| knobs | full: wall | full: repo on disk | second pass: wall |", "|---|---|---|---|"]
    for name in dict.fromkeys(e["format"] for e in media):
        full = next((e for e in media if e["format"] == name and e["phase"] == "full"), {})
        second = next((e for e in media if e["format"] == name and e["phase"] == "second-pass"), {})
        knobs = " ".join(full.get("flags") or []) + " ".join(f"{k}={v}" for k, v in (full.get("env") or {}).items())
        lines.append(f"| {name} (`{knobs or 'defaults'}`) | {fmt(full.get('wall_s'), ' s')} | "
                     f"{fmt((full.get('repo_growth') or 0) / MB, ' MB', 0)} | {fmt(second.get('wall_s'), ' s')} |")
    return lines


def _format_table(exps: list[dict]) -> list[str]:
    lines = ["", "#### PG_DUMP_FORMAT experiments (database pipeline alone, same argv as the worker)", "",
             "| format | dump bytes | full: wall | full: repo on disk | night 2: wall | night 2: data_added "
             "| night 2: repo growth | load (stream) | load (file, pg_restore -j) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(e["format"] for e in exps):
        es = [e for e in exps if e["format"] == name]
        full = next((e for e in es if e["phase"] == "full"), {})
        incr = next((e for e in es if e["phase"] == "incr"), {})
        stream = next((e for e in es if e.get("method") == "stream"), {})
        files = [e for e in es if (e.get("method") or "").startswith("file")]
        ftxt = ", ".join(f"{e['method'].split('-')[1]}: {fmt(e.get('wall_s'), ' s')}"
                         + (f" (file {e['file_write_s']:.1f} s)" if e.get("file_write_s") is not None else "")
                         + ("" if e.get("verified", True) else " (MISMATCH)") for e in files) or "–"
        lines.append(
            f"| {name} | {fmt((full.get('dump_bytes') or 0) / MB, ' MB', 0)} | {fmt(full.get('wall_s'), ' s')} | "
            f"{fmt((full.get('repo_growth') or 0) / MB, ' MB', 0)} | {fmt(incr.get('wall_s'), ' s')} | "
            f"{fmt((incr.get('data_added') or 0) / MB, ' MB', 0)} | "
            f"{fmt((incr.get('repo_growth') or 0) / MB, ' MB', 0)} | "
            f"{fmt(stream.get('wall_s'), ' s')}{'' if stream.get('verified', True) else ' (MISMATCH)'} | {ftxt} |")
    return lines


def markdown(results: dict) -> str:
    lines = _header(results) + _metrics_table(results["summary"])
    lines.append("")
    lines.append("Wall times for taiga-backup run from Celery's task-sent to task-succeeded event; for the old "
                 "pipeline from the operator's scale-down to all pods available again. Downtime (both) is from the "
                 "API double's replica history: first scale to 0 → last return to the original count.")
    if results.get("restore_note"):
        lines.append("")
        lines.append(results["restore_note"])
    media = [e for e in results.get("experiments") or [] if e["format"] in MEDIA_EXPERIMENTS]
    if media:
        lines += _media_table(media)
    exps = [e for e in results.get("experiments") or [] if e["format"] not in MEDIA_EXPERIMENTS]
    if exps:
        lines += _format_table(exps)
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: str, scale: float) -> str:
    """results-scale<S>-<time>.json (every raw number) and .md (the tables) in out_dir; returns the
    markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"results-scale{scale:g}-{stamp}"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    md = markdown(results)
    (out / f"{name}.md").write_text(md)
    print(md)
    log(f"results written to {out / name}.json / .md (total {results['total_seconds']} s)")
    return md
