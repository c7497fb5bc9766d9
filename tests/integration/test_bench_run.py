"""The benchmark harness's own arithmetic: downtime from the replica history, step timelines from
the worker log, restic's text sizes, and the summary ratios. Pure functions, no servers: the
harness itself is run by hand (bench/README.md), not as a timed test."""

from __future__ import annotations

import pytest

from bench import scales
from bench.old_operator import downtime
from bench.pipelines import old_data_added
from bench.report import markdown, summarise
from bench.worker_view import covered, step_timeline


class FakeKube:
    def __init__(self, histories):
        self.histories = histories

    def history(self, namespace, name):
        return self.histories[name]


def test_downtime_spans_first_scale_down_to_last_return():
    kube = FakeKube({
        "a": [(0.0, 1), (10.0, 0), (20.0, 1)],
        "b": [(0.0, 2), (10.5, 0), (21.5, 2)],
    })
    assert downtime(kube, {"a": 1, "b": 2}, since=5.0) == 11.5


def test_downtime_ignores_history_before_the_run_and_unfinished_runs():
    kube = FakeKube({"a": [(0.0, 1), (1.0, 0), (2.0, 1), (10.0, 0)]})
    assert downtime(kube, {"a": 1}, since=5.0) is None
    assert downtime(kube, {"a": 1}, since=0.5) == 1.0


def test_covered_is_the_union_of_intervals():
    assert covered([[0, 2], [1, 3], [5, 6]]) == 4
    assert covered([]) == 0


def test_step_timeline_reads_one_tasks_steps_from_the_text_log(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text(
        "[2026-01-01 10:00:00,000: INFO/MainProcess] Task taiga_backup.backup[t0] received\n"
        "[2026-01-01 10:00:00,100: INFO/MainProcess] backup: preflight started\n"
        "[2026-01-01 10:00:01,000: INFO/MainProcess] Task taiga_backup.backup[t0] succeeded in 1s: {}\n"
        "[2026-01-01 10:01:00,000: INFO/MainProcess] Task taiga_backup.backup[t1] received\n"
        "[2026-01-01 10:01:00,250: INFO/MainProcess] backup: dump_db started\n"
        "[2026-01-01 10:01:02,750: INFO/MainProcess] backup: dump_db finished in 2.5s\n"
        "[2026-01-01 10:01:03,000: INFO/MainProcess] Task taiga_backup.backup[t1] succeeded in 3s: {}\n")
    timeline = step_timeline(log, "t1")
    assert list(timeline) == ["dump_db"]
    start, end = timeline["dump_db"]
    assert round(end - start, 3) == 2.5


def test_old_procedure_sizes_are_parsed_from_restics_text():
    added = old_data_added({"db": "12.345 MiB", "files": "1.000 GiB"})
    assert added["pg-database"] == int(12.345 * 1024 ** 2)
    assert added["files"] == 1024 ** 3
    assert added["total"] == added["files"] + added["pg-database"]
    assert old_data_added({}) == {}


def test_summary_ratios_and_markdown():
    def r(variant, phase, wall, **kw):
        return {"variant": variant, "phase": phase, "wall_s": wall, "downtime_s": kw.pop("down", None), **kw}

    results = {
        "dataset": {"db_bytes": 600, "media_bytes": 400, "media_files": 3},
        "runs": [
            r("old", "full", 10.0, down=9.0),
            r("tb-plain", "full", 8.0, down=5.0, rss_mb={"worker (python)": 100.0}),
            r("tb-plain", "full", 7.0, down=4.0),
            r("old", "incr", 6.0, data_added={"total": 300}, repo_growth={"total": 100}),
            r("tb-plain", "incr", 3.0, data_added={"total": 30}, repo_growth={"total": 20}),
            r("tb-plain", "restore", 1.0, error="boom"),
        ],
        "experiments": [],
        "machine": {"cpu_model": "x", "cores": 2, "ram_gib": 1, "restic": "r", "pg_dump": "p",
                    "postgres_server": "s", "python": "3", "celery": "5", "git": "g", "loadavg_at_start": []},
        "args": {"scale": 0.1, "pod_start_delay": 1, "pod_stop_delay": 1, "repeat": 2},
    }
    summary = summarise(results)
    ratios = summary["tb-plain"]["ratios"]
    assert summary["tb-plain"]["full"]["wall_s"] == 7.5
    assert ratios["full_vs_old"] == 0.75
    assert ratios["downtime_vs_old_backup"] == 0.45
    assert ratios["incr_vs_own_full"] == 0.4
    assert ratios["incr_added_pct_of_dataset"] == 3.0
    assert "restore" not in summary["tb-plain"]  # failed runs are not summarised
    results["summary"] = summary
    text = markdown(results)
    assert "| full backup wall (median, min–max) | ≤ 0.9× old | 10.0 s | 7.5 s (7.0–8.0) | 0.75× |" in text


def _scale_result(scale: float, files: int, old_wall: float, down: float, **looks) -> dict:
    """What bench.run writes for one run, as far as bench.scales reads it."""
    def r(variant, phase, wall, **kw):
        return {"variant": variant, "phase": phase, "wall_s": wall,
                "pipeline": "old" if variant == "old" else "taiga-backup", **kw}

    runs = [r("old", night, old_wall, downtime_s=old_wall - 1) for night in ("full", "incr", "upload")]
    runs += [r("tb-plain", "full", old_wall * 0.8, downtime_s=down, media_looks_s=[looks["first"], looks["last"]],
               quiesced_pass=False, rss_mb={"worker (python)": 120.0}),
             r("tb-plain", "incr", old_wall * 0.6, downtime_s=down + 1, quiesced_pass=True),
             r("tb-plain", "upload", old_wall * 0.7, downtime_s=down, quiesced_pass=False)]
    results = {"dataset": {"db_bytes": int(scale * 1e9), "media_bytes": int(scale * 1e9), "media_files": files},
               "runs": runs, "args": {"scale": scale}}
    results["summary"] = summarise(results)
    return results


def test_the_curves_figures_every_night_of_every_run_and_the_downtimes_growth():
    by_run = {scales.label(0.25): _scale_result(0.25, 1000, 10.0, 1.2, first=0.05, last=0.06),
              scales.label(4.0): _scale_result(4.0, 16000, 90.0, 1.6, first=0.4, last=0.5),
              scales.label(0.25, 500000): _scale_result(0.25, 501000, 40.0, 5.0, first=3.0, last=3.1)}
    figures = scales.figures(by_run)
    assert figures["runs"] == ["0.25", "4", "0.25+500000files"]
    big = figures["per_run"]["4"]
    assert big["full_wall_vs_old"] == 0.8 and big["incr_wall_vs_old"] == 0.6 and big["upload_wall_vs_old"] == 0.7
    assert big["incr_quiesced_passes"] == 1 and big["upload_quiesced_passes"] == 0
    assert (big["look_first_s"], big["look_quiesced_s"]) == (0.4, 0.5)
    # growth is read between the byte scales only: the many-files run's 5 s is left out
    assert figures["downtime_growth_per_old_second"] == 0.005
    text = scales.markdown({"figures": figures})
    assert "| taiga-backup: app downtime (upload night) | ≤ 1.5 s | 1.2 s | 1.6 s | 5.0 s |" in text
    assert "| media tree look: before the pre-pass / with the app down |  | 0.05 s / 0.06 s |" in text


def test_the_curves_are_drawn_as_png_files(tmp_path):
    pytest.importorskip("matplotlib")  # the bench's extra; the figures above need none
    from bench import plots

    by_run = {scales.label(s): _scale_result(s, int(s * 4000), 10.0 * s + 5, 1.3, first=0.1 * s, last=0.1 * s)
              for s in (0.25, 1.0, 4.0)}
    by_run[scales.label(0.25, 500000)] = _scale_result(0.25, 501000, 40.0, 5.0, first=3.0, last=3.1)
    paths = plots.draw({"figures": scales.figures(by_run)}, tmp_path)
    assert [p.name for p in paths] == ["backup-wall.png", "backup-downtime.png", "backup-worker.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
