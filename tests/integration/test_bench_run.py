"""The benchmark harness's own arithmetic: downtime from the replica history, step timelines from
the worker log, restic's text sizes, and the summary ratios. Pure functions, no servers: the
harness itself is run by hand (bench/README.md), not as a timed test."""

from __future__ import annotations

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
