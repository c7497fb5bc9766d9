"""Benchmark: the old shell procedure and taiga-backup side by side, on the same data, in one run.

    python -m bench.run --scale 1.0 [--formats plain,custom] [--out bench/out]

What it does (see bench/README.md for every option):

1. starts throw-away servers (redis-server, a PostgreSQL 15 cluster, the Kubernetes API double with
   Taiga's deployments) and generates a Taiga-like dataset (testkit.dataset) at --scale;
2. night 1 ("full"): runs, alternately, the old pipeline (operator scales gateway+front down, the
   seed's `pg_dump | restic backup --stdin` then `restic backup .`, scales back up) and taiga-backup
   (a real worker process per PG_DUMP_FORMAT, `taiga-backup backup --wait --json`), each into its
   own fresh repositories;
3. applies one "day of changes" (testkit.dataset.apply_day_of_changes) and runs night 2 ("incr") the
   same way into the same repositories;
4. restores (old: drop/create, `restic dump | psql`, `restic restore`; taiga-backup: the
   `taiga_backup.restore` task when the worker has it) and checks each result against checksums;
5. format experiments (db only, no worker): plain / custom -Z0 / custom compressed / plain with
   restic --compression max, for dump time, repository growth and load time (incl. pg_restore -j2
   from a seekable file).

Measured: wall times, app downtime from the API double's replica history (scale to 0 -> back to the
original count), restic's data_added and the repository's growth on disk, peak RSS (VmHWM) of the
worker process and of each child program, queue-to-start from Celery task events. Prints a
markdown table and writes the raw numbers as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT),):
    if p not in sys.path:
        sys.path.insert(0, p)

from testkit import dataset, old_procedure  # noqa: E402
from testkit.k8s_double import KubeApiDouble  # noqa: E402
from testkit.servers import PostgresCluster, RedisServer, free_port  # noqa: E402

NAMESPACE = "taiga"
BACKUP_DEPLOYMENTS = {"taiga-gateway-deployment": 1, "taiga-front-deployment": 2}
RESTORE_ONLY_DEPLOYMENTS = {"taiga-back-deployment": 1, "taiga-async-deployment": 1,
                            "taiga-events-deployment": 1, "taiga-protected-deployment": 1}
RESTORE_DEPLOYMENTS = {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}
DB_NAME, DB_USER, DB_PASSWORD = "taiga", "taiga", "taiga-bench-db-pw"
RESTIC_PASSWORD = "taiga-bench-restic-pw"
POLL = 0.25                      # the same poll interval worker.adapters.kube uses
WORKER_FORMATS = ("plain", "custom")
EXPERIMENTS = ("plain", "custom", "custom-z", "plain-zmax", "plain-zoff", "plain-pack64")
# restic's own knobs on the media alone (a full pass, then a second pass with the first as parent,
# as the backup's pre-pass and quiesced pass): (restic flags, extra environment)
MEDIA_EXPERIMENTS = {
    "media-auto": ([], {}),
    "media-off": (["--compression", "off"], {}),
    "media-off-pack64": (["--compression", "off", "--pack-size", "64"], {}),
    "media-auto-gomaxprocs1": ([], {"GOMAXPROCS": "1"}),
}
MB = 1_000_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ machine


def _cmd_out(argv) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def machine_info(pg_server_version: str) -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import celery
    import kombu

    git = _cmd_out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "restic": _cmd_out(["restic", "version"]),
        "pg_dump": _cmd_out(["pg_dump", "--version"]),
        "postgres_server": pg_server_version,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "git": git + ("+dirty" if dirty else ""),
        "loadavg_at_start": loadavg(),
    }


# ------------------------------------------------------------------------------- process memory


def _status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Name", "VmHWM", "VmRSS"):
                out[key] = value.strip()
    except OSError:
        return {}
    return out


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def _kb(text: str | None) -> int:
    return int(text.split()[0]) if text else 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssWatch:
    """Polls a process tree (root + descendants) and keeps each program's peak RSS.

    The root's peak is its VmHWM (reset at the start); children's peaks are the largest VmHWM seen
    while they lived (VmHWM only grows, so the last poll before exit is close to the true peak).
    """

    def __init__(self, root: int, exclude: set[int] | None = None, interval: float = 0.05):
        self.root = root
        self.exclude = exclude or set()
        self.interval = interval
        self.peaks: dict[str, int] = {}      # program name -> kB
        self.root_reset = reset_peak(root)
        self.root_rss_samples_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-watch")

    def __enter__(self) -> "RssWatch":
        self._cpu0 = cpu_seconds(self.root)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        st = _status(self.root)
        self.root_peak_kb = max(_kb(st.get("VmHWM")), self.root_rss_samples_max)
        self.root_cpu_s = round(cpu_seconds(self.root) - self._cpu0, 2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            st = _status(self.root)
            self.root_rss_samples_max = max(self.root_rss_samples_max, _kb(st.get("VmRSS")))
            todo = [c for c in _children(self.root) if c not in self.exclude]
            while todo:
                pid = todo.pop()
                cst = _status(pid)
                if cst:
                    name = cst.get("Name", "?")
                    self.peaks[name] = max(self.peaks.get(name, 0), _kb(cst.get("VmHWM")))
                todo += [c for c in _children(pid) if c not in self.exclude]
            self._stop.wait(self.interval)

    def result(self, root_name: str | None) -> dict:
        out = {name: round(kb / 1024, 1) for name, kb in sorted(self.peaks.items())}
        if root_name:
            out[root_name] = round(self.root_peak_kb / 1024, 1)
        return out


# ---------------------------------------------------------------------------- Kubernetes (operator)


class Operator:
    """What an operator does around the old procedure: `kubectl scale --replicas=0`, wait until the
    pods are gone, ..., `kubectl scale` back, wait until available - through the official client,
    polling like worker.adapters.kube does, so both pipelines pay the same waits."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=kubeconfig)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def scale_down(self, names: dict) -> None:
        for name in names:
            self.apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": 0}})
        for name in names:
            while self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items:
                time.sleep(POLL)

    def scale_up(self, names: dict) -> None:
        for name, count in names.items():
            self.apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": count}})
        for name, count in names.items():
            while True:
                dep = self.apps.read_namespaced_deployment(name, NAMESPACE)
                if int((dep.status and dep.status.available_replicas) or 0) >= count:
                    break
                time.sleep(POLL)


def downtime(kube: KubeApiDouble, names: dict, since: float) -> float | None:
    """From the first scale to 0 to the last return to the original count, after `since`."""
    first_down, last_up = None, None
    for name, original in names.items():
        down = None
        for t, replicas in kube.history(NAMESPACE, name):
            if t < since:
                continue
            if replicas == 0 and down is None:
                down = t
                first_down = t if first_down is None else min(first_down, t)
            elif down is not None and replicas == original:
                last_up = t if last_up is None else max(last_up, t)
                down = None
    if first_down is None or last_up is None:
        return None
    return round(last_up - first_down, 3)


# --------------------------------------------------------------------------------- small helpers


def dir_bytes(path: str | Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def restic_env(repo: str, cache: str) -> dict:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(RESTIC_REPOSITORY=repo, RESTIC_PASSWORD_FILE=str(PASSWORD_FILE), RESTIC_CACHE_DIR=cache)
    return env


def restic_init(repo: str, cache: str) -> None:
    subprocess.run(["restic", "init"], env=restic_env(repo, cache), check=True, capture_output=True)


PASSWORD_FILE = Path("/nonexistent")  # set in main()


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return round(a / b, 2)


# ----------------------------------------------------------------------------- worker log timeline

_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/[^\]]*\] (.*)$")
_STEP = re.compile(r"^(\w+): (\w+) (started|finished|FAILED)")


def step_timeline(log_path: Path, task_id: str) -> dict[str, list[float]]:
    """{step: [start, end]} (epoch seconds, ms resolution) from the worker's text log lines
    "<job>: <step> started/finished", between the task's "received" and "succeeded" lines."""
    timeline: dict[str, list[float]] = {}
    inside = False
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return timeline
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        msg = m.group(3)
        if f"[{task_id}] received" in msg:
            inside = True
            continue
        if not inside:
            continue
        if f"[{task_id}] succeeded" in msg or f"[{task_id}] raised" in msg:
            break
        st = _STEP.match(msg)
        if st:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            timeline.setdefault(st.group(2), [ts, ts])
            if st.group(3) == "started":
                timeline[st.group(2)][0] = ts
            else:
                timeline[st.group(2)][1] = ts
    return timeline


def covered(intervals: list[list[float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


# ----------------------------------------------------------------------------- Celery task events


class TaskEvents:
    """Flower's view: task-sent / task-received / task-started / task-succeeded timestamps."""

    def __init__(self, app):
        self.app = app
        self.events: dict[str, dict[str, float]] = {}
        self._recv = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="celery-events")
        self._thread.start()
        self._ready.wait(10)

    def _on(self, event: dict) -> None:
        uuid = event.get("uuid")
        if uuid and event.get("type", "").startswith("task-"):
            # the first of each kind: a backup's id is also its chain's last link's (Task.replace),
            # whose task-sent comes later
            self.events.setdefault(uuid, {}).setdefault(event["type"], float(event.get("timestamp") or time.time()))

    def _run(self) -> None:
        while True:
            try:
                with self.app.connection_for_read() as conn:
                    self._recv = self.app.events.Receiver(conn, handlers={"*": self._on})
                    self._ready.set()
                    self._recv.capture(limit=None, timeout=None, wakeup=False)
                return
            except Exception as exc:  # broker hiccup: keep listening
                log(f"event receiver: {exc}")
                time.sleep(1)

    def wait_for(self, task_id: str, kind: str, timeout: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ts = self.events.get(task_id, {}).get(kind)
            if ts is not None:
                return ts
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        if self._recv is not None:
            self._recv.should_stop = True


# ------------------------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="tb-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.media = self.work / "media"
        self.secrets = self.work / "secrets"
        self.secrets.mkdir(exist_ok=True)
        global PASSWORD_FILE
        PASSWORD_FILE = self.secrets / "restic-password"
        PASSWORD_FILE.write_text(RESTIC_PASSWORD + "\n")
        (self.secrets / "postgres-password").write_text(DB_PASSWORD + "\n")
        self.codes = args.code  # label -> tree the worker and CLI run from
        self.redis = self.pg = self.kube = None
        self.workers: dict[str, dict] = {}
        self.results: dict = {"runs": [], "experiments": []}

    # -- servers, data ---------------------------------------------------------------------
    def start_servers(self) -> None:
        self.redis = RedisServer().start()
        self.pg = PostgresCluster().start()
        self.kube = KubeApiDouble(pod_start_delay=self.args.pod_start_delay,
                                  pod_stop_delay=self.args.pod_stop_delay).start()
        self.kubeconfig = self.kube.write_kubeconfig(str(self.work / "kubeconfig"))
        for name, replicas in RESTORE_DEPLOYMENTS.items():
            self.kube.add_deployment(NAMESPACE, name, replicas=replicas)
        self.operator = Operator(self.kubeconfig)

    def stop_servers(self) -> None:
        for w in self.workers.values():
            self.stop_worker(w)
        if self.kube:
            self.kube.stop()
        if self.pg:
            self.pg.cleanup()
        if self.redis:
            self.redis.cleanup()

    @property
    def db(self) -> dict:
        return {"host": "127.0.0.1", "port": self.pg.port, "user": DB_USER, "password": DB_PASSWORD,
                "dbname": DB_NAME}

    def conninfo(self, dbname: str = DB_NAME) -> str:
        return (f"host=127.0.0.1 port={self.pg.port} user={DB_USER} password={DB_PASSWORD} "
                f"dbname={dbname}")

    def generate(self) -> dict:
        self.pg.create_app_db(DB_NAME, DB_USER, DB_PASSWORD)
        dataset.create_schema(self.conninfo())
        log(f"generating the dataset at scale {self.args.scale} ...")
        stats = dataset.populate(self.conninfo(), str(self.media), scale=self.args.scale, seed=self.args.seed)
        log(f"dataset: {stats['db_bytes'] / MB:.0f} MB database, {stats['media_bytes'] / MB:.0f} MB media "
            f"({stats['media_files']} files) in {stats['seconds']} s")
        return stats

    # -- repositories ---------------------------------------------------------------------------
    def repo_base(self, variant: str) -> Path:
        return self.work / "repos" / variant

    def cache_dir(self, variant: str) -> Path:
        return self.work / "cache" / variant

    def fresh_repos(self, variant: str, names=("files", "pg-database")) -> None:
        base, cache = self.repo_base(variant), self.cache_dir(variant)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        base.mkdir(parents=True)
        cache.mkdir(parents=True)
        for name in names:
            restic_init(str(base / name), str(cache))

    def repo_sizes(self, variant: str) -> dict:
        base = self.repo_base(variant)
        return {p.name: dir_bytes(p) for p in sorted(base.iterdir())} if base.exists() else {}

    # -- taiga-backup workers ---------------------------------------------------------------------
    def worker_env(self, variant: str, fmt: str, code: Path = ROOT) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "RESTIC_", "POSTGRES_", "PG"))}
        db_index = 1 + len(self.workers)
        env.update({
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis.port}/{db_index}",
            "RESTIC_REPOSITORY": str(self.repo_base(variant)),
            "RESTIC_PASSWORD_FILE": str(PASSWORD_FILE),
            "RESTIC_CACHE_DIR": str(self.cache_dir(variant)),
            "POSTGRES_HOST": f"127.0.0.1:{self.pg.port}",
            "POSTGRES_DB": DB_NAME,
            "POSTGRES_USER": DB_USER,
            "POSTGRES_PASSWORD_FILE": str(self.secrets / "postgres-password"),
            "PG_DUMP_FORMAT": fmt,
            "BACKUP_FILES_DIR": str(self.media),
            "KUBECONFIG": self.kubeconfig,
            "KUBE_NAMESPACE": NAMESPACE,
            "QUIESCE_DEPLOYMENTS": ",".join(BACKUP_DEPLOYMENTS),
            "RESTORE_QUIESCE_DEPLOYMENTS": ",".join(RESTORE_DEPLOYMENTS),
            "RESTORE_CHOWN": "off",
            "QUIESCE_TIMEOUT": "300",
            "RESUME_TIMEOUT": "300",
            "JOB_LOCK_LEASE": str(self.args.lease),
            "METRICS_PORT": str(free_port()),
            "BACKUP_SCHEDULE": "off", "PRUNE_SCHEDULE": "off", "CHECK_SCHEDULE": "off", "VERIFY_SCHEDULE": "off",
            "HOME": str(self.work),
            "PYTHONPATH": str(code),
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "text",  # bench.run reads step times from the text log
        })
        return env

    def start_worker(self, variant: str, fmt: str, code: Path = ROOT) -> dict:
        from worker.celery_app import make_app

        env = self.worker_env(variant, fmt, code)
        logf = open(self.work / f"worker-{variant}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--loglevel", "INFO"], cwd=str(code),
                                env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        app = make_app(env)
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {variant} did not start; see {logf.name}")
        registered = []
        try:
            replies = app.control.inspect(timeout=2).registered() or {}
            registered = sorted({t for tasks in replies.values() for t in tasks})
        except Exception:
            pass
        w = {"variant": variant, "format": fmt, "code": str(code), "env": env, "proc": proc, "log": logf, "app": app,
             "events": TaskEvents(app), "registered": registered, "started": time.monotonic()}
        self.workers[variant] = w
        return w

    def settle(self) -> None:
        """The start-up reconciles (now and after the lease) must be over before timing anything."""
        if not self.workers:
            return
        wait = max(w["started"] for w in self.workers.values()) + self.args.lease + 4 - time.monotonic()
        if wait > 0:
            log(f"waiting {wait:.0f} s for the workers' start-up reconciles")
            time.sleep(wait)

    def stop_worker(self, w: dict) -> None:
        w["events"].stop()
        if w["proc"].poll() is None:
            os.killpg(w["proc"].pid, signal.SIGTERM)
            try:
                w["proc"].wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(w["proc"].pid, signal.SIGKILL)
                w["proc"].wait()
        w["log"].close()

    # -- one measured run ---------------------------------------------------------------------------
    def _record(self, run: dict) -> dict:
        run["loadavg"] = loadavg()
        self.results["runs"].append(run)
        brief = {k: run.get(k) for k in ("wall_s", "downtime_s", "data_added", "repo_growth", "error")}
        log(f"{run['phase']:<8} {run['variant']:<10} {json.dumps(brief)}")
        return run

    def run_old_backup(self, phase: str) -> dict:
        variant = "old"
        before = self.repo_sizes(variant)
        busy0 = cpu_busy()
        t0 = time.monotonic()
        run = {"phase": phase, "variant": variant, "pipeline": "old"}
        with RssWatch(os.getpid(), exclude={w["proc"].pid for w in self.workers.values()}) as rss:
            self.operator.scale_down(BACKUP_DEPLOYMENTS)
            try:
                out = old_procedure.old_backup(str(self.repo_base(variant)), str(self.media), self.db,
                                               {"RESTIC_PASSWORD_FILE": str(PASSWORD_FILE),
                                                "RESTIC_CACHE_DIR": str(self.cache_dir(variant))})
                run["steps"] = out["seconds"]
                run["added_text"] = out["added"]
            except old_procedure.OldProcedureError as exc:
                run["error"] = str(exc)[-2000:]
            finally:
                self.operator.scale_up(BACKUP_DEPLOYMENTS)
        run["wall_s"] = round(time.monotonic() - t0, 3)
        run["downtime_s"] = downtime(self.kube, BACKUP_DEPLOYMENTS, t0)
        run["rss_mb"] = rss.result(None)
        run["cpu_busy_fraction"] = self._busy_since(busy0)
        after = self.repo_sizes(variant)
        run["repo_growth"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        run["repo_growth"]["total"] = sum(run["repo_growth"].values())
        run["data_added"] = self._old_data_added(run.get("added_text"))
        return self._record(run)

    @staticmethod
    def _old_data_added(added_text: dict | None) -> dict:
        """restic's data_added for the old pipeline, from its text output ("Added to the repo:
        12.345 MiB", three decimals: exact to about 1 KiB)."""
        units = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4}
        out = {}
        for key, name in (("files", "files"), ("db", "pg-database")):
            text = (added_text or {}).get(key) or ""
            m = re.match(r"([0-9.]+)\s*(B|KiB|MiB|GiB|TiB)", text)
            if m:
                out[name] = int(float(m.group(1)) * units[m.group(2)])
        if out:
            out["total"] = sum(out.values())
        return out

    @staticmethod
    def _busy_since(busy0) -> float:
        b1 = cpu_busy()
        total = b1[1] - busy0[1]
        return round((b1[0] - busy0[0]) / total, 3) if total else 0.0

    def run_tb(self, variant: str, phase: str, command: list[str], deployments: dict) -> dict:
        w = self.workers[variant]
        before = self.repo_sizes(variant)
        busy0 = cpu_busy()
        run = {"phase": phase, "variant": variant, "pipeline": "taiga-backup", "format": w["format"]}
        t0 = time.monotonic()
        wall0 = time.time()
        spy = None
        if self.args.py_spy:
            prof = Path(self.args.out) / f"py-spy-{variant}-{phase}-{len(self.results['runs'])}.txt"
            prof.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([self.args.py_spy, "record", "--pid", str(w["proc"].pid), "--format", "raw",
                                    "--rate", "50", "--threads", "--idle", "--output", str(prof)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            run["py_spy"] = str(prof)
        with RssWatch(w["proc"].pid) as rss:
            done = subprocess.run([sys.executable, "-m", "worker.cli", *command, "--wait", "--json"], cwd=w["code"],
                                  env=w["env"], capture_output=True, text=True)
        t1 = time.monotonic()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        run["cli_wall_s"] = round(t1 - t0, 3)
        run["downtime_s"] = downtime(self.kube, deployments, t0)
        run["rss_mb"] = rss.result("worker (python)")
        run["worker_peak_reset"] = rss.root_reset
        run["worker_cpu_s"] = rss.root_cpu_s
        run["cpu_busy_fraction"] = self._busy_since(busy0)
        try:
            out = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            run["error"] = f"CLI exit {done.returncode}: {done.stderr[-2000:]}"
            run["wall_s"] = run["cli_wall_s"]
            return self._record(run)
        task_id = out.get("task_id")
        run["task_id"] = task_id
        if out.get("state") != "SUCCESS":
            run["error"] = out.get("error") or out.get("state")
        report = out.get("result") or out.get("report") or {}
        ev = w["events"]
        sent = ev.wait_for(task_id, "task-sent", 5)
        started = ev.wait_for(task_id, "task-started", 5)
        finished = ev.wait_for(task_id, "task-succeeded", 5) or ev.wait_for(task_id, "task-failed", 1)
        run["events"] = {"sent": sent, "started": started, "finished": finished, "cli_spawned": wall0}
        if sent and finished:
            run["wall_s"] = round(finished - sent, 3)
        else:
            run["wall_s"] = run["cli_wall_s"]
        if sent and started:
            run["queue_to_start_s"] = round(started - sent, 3)
        steps = {name: s.get("seconds") for name, s in (report.get("steps") or {}).items()}
        run["steps"] = steps
        run["report_duration_s"] = report.get("duration_seconds")
        run["job_downtime_s"] = report.get("downtime_seconds")
        timeline = step_timeline(self.work / f"worker-{variant}.log", task_id) if task_id else {}
        run["timeline"] = {k: [round(a - (sent or 0), 3), round(b - (sent or 0), 3)] for k, (a, b) in timeline.items()}
        if phase in ("full", "incr"):
            run["data_added"] = (report.get("bytes_added") or {})
            run["dump_bytes"] = (report.get("database") or {}).get("dump_bytes")
            # bookkeeping: the job's wall time not covered by quiesce, the two data steps and resume
            busy = [timeline[k] for k in ("media_prepass", "quiesce", "db_snapshot", "dump_db", "restic_backup",
                                          "resume") if k in timeline]
            if busy and run.get("wall_s") is not None:
                run["bookkeeping_s"] = round(run["wall_s"] - covered(busy), 3)
            elif steps and run.get("wall_s") is not None:
                work = (steps.get("quiesce") or 0) + (steps.get("resume") or 0) + max(
                    steps.get("dump_db") or 0, steps.get("restic_backup") or 0)
                run["bookkeeping_s"] = round(run["wall_s"] - work, 3)
        run["report"] = report
        after = self.repo_sizes(variant)
        run["repo_growth"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        run["repo_growth"]["total"] = sum(run["repo_growth"].values())
        return self._record(run)

    def run_old_restore(self) -> dict:
        variant = "old"
        run = {"phase": "restore", "variant": variant, "pipeline": "old"}
        busy0 = cpu_busy()
        t0 = time.monotonic()
        with RssWatch(os.getpid(), exclude={w["proc"].pid for w in self.workers.values()}) as rss:
            self.operator.scale_down(RESTORE_DEPLOYMENTS)
            try:
                out = old_procedure.old_restore(str(self.repo_base(variant)), str(self.media), self.db,
                                                {"RESTIC_PASSWORD_FILE": str(PASSWORD_FILE),
                                                 "RESTIC_CACHE_DIR": str(self.cache_dir(variant))})
                run["steps"] = out["seconds"]
                run["psql_errors"] = out["psql_errors"][:20]
            except old_procedure.OldProcedureError as exc:
                run["error"] = str(exc)[-2000:]
            finally:
                self.operator.scale_up(RESTORE_DEPLOYMENTS)
        run["wall_s"] = round(time.monotonic() - t0, 3)
        run["downtime_s"] = downtime(self.kube, RESTORE_DEPLOYMENTS, t0)
        run["rss_mb"] = rss.result(None)
        run["cpu_busy_fraction"] = self._busy_since(busy0)
        return self._record(run)

    def verify(self, run: dict, reference: dict) -> None:
        if reference is None or run.get("error"):
            return
        t = time.monotonic()
        tables = dataset.table_checksums(self.conninfo())
        media = dataset.tree_digest(str(self.media))
        bad_tables = sorted(k for k in set(tables) | set(reference["tables"])
                            if tables.get(k) != reference["tables"].get(k))
        bad_files = sorted(k for k in set(media) | set(reference["media"])
                           if media.get(k) != reference["media"].get(k))
        run["verified"] = not bad_tables and not bad_files
        if not run["verified"]:
            run["verify_mismatch"] = {"tables": bad_tables[:20], "files": bad_files[:20],
                                      "n_files": len(bad_files)}
        log(f"verify {run['variant']}: {'exact' if run['verified'] else 'MISMATCH'} "
            f"({time.monotonic() - t:.1f} s)")

    # -- format experiments: the db pipeline alone, with the same argv the worker uses ---------------------
    def exp_dump_argv(self, fmt: str) -> tuple[list[str], list[str]]:
        """(pg_dump argv, extra restic flags) for an experiment."""
        from worker.adapters import postgres

        settings = self._settings()
        if fmt == "plain":
            return postgres.dump_argv(settings, "plain"), []
        if fmt == "custom":
            return postgres.dump_argv(settings, "custom"), []
        if fmt == "custom-z":   # pg_dump's default compression for the custom format (gzip, level 6)
            argv = postgres.dump_argv(settings, "plain")
            return argv[:-1] + ["--format=custom"] + argv[-1:], []
        if fmt == "plain-zmax":
            return postgres.dump_argv(settings, "plain"), ["--compression", "max"]
        if fmt == "plain-zoff":
            return postgres.dump_argv(settings, "plain"), ["--compression", "off"]
        if fmt == "plain-pack64":
            return postgres.dump_argv(settings, "plain"), ["--pack-size", "64"]
        raise ValueError(fmt)

    def _settings(self):
        from worker.settings import Settings

        any_env = self.worker_env("exp", "plain")
        return Settings.from_env(any_env)

    def run_exp_dump(self, fmt: str, phase: str) -> dict:
        from worker.adapters import postgres, process
        from worker.adapters.restic import JsonLines

        variant = f"exp-{fmt}"
        if phase == "full":
            self.fresh_repos(variant, names=("pg-database",))
        repo = self.repo_base(variant) / "pg-database"
        before = dir_bytes(repo)
        argv, extra = self.exp_dump_argv(fmt)
        lines = JsonLines()
        t0 = time.monotonic()
        with RssWatch(os.getpid(), exclude={w["proc"].pid for w in self.workers.values()}) as rss:
            prod, cons = process.pipe(argv, ["restic", "backup", "--json", "--stdin", "--host", "bench", *extra],
                                      producer_env=postgres.client_env(self._settings()),
                                      consumer_env=restic_env(str(repo), str(self.cache_dir(variant))),
                                      on_consumer_line=lines)
        run = {"phase": phase, "variant": variant, "format": fmt, "wall_s": round(time.monotonic() - t0, 3),
               "rss_mb": rss.result(None)}
        if not (prod.ok and cons.ok):
            run["error"] = (prod.stderr or cons.stderr)[-1000:]
        s = lines.summary or {}
        run.update(data_added=s.get("data_added"), dump_bytes=s.get("total_bytes_processed"),
                   restic_duration_s=s.get("total_duration"), repo_growth=dir_bytes(repo) - before)
        self.results["experiments"].append(run)
        log(f"exp {phase:<5} {fmt:<10} wall {run['wall_s']} s, dump {run['dump_bytes']}, "
            f"added {run['data_added']}, repo +{run['repo_growth']}")
        return run

    def run_exp_media(self, name: str) -> list[dict]:
        """The media alone with one set of restic knobs: a full pass into a fresh repository, then
        a second pass with the first as parent (what the quiesced pass does)."""
        from worker.adapters import process
        from worker.adapters.restic import JsonLines

        flags, extra = MEDIA_EXPERIMENTS[name]
        variant = f"exp-{name}"
        self.fresh_repos(variant, names=("files",))
        repo = self.repo_base(variant) / "files"
        env = {**restic_env(str(repo), str(self.cache_dir(variant))), **extra}
        out, parent = [], None
        for phase in ("full", "second-pass"):
            lines = JsonLines()
            argv = ["restic", "backup", "--json", "--host", "bench", *flags, *(["--parent", parent] if parent else []), "."]
            before = dir_bytes(repo)
            t0 = time.monotonic()
            with RssWatch(os.getpid(), exclude={w["proc"].pid for w in self.workers.values()}) as rss:
                done = process.run(argv, env=env, cwd=str(self.media), on_line=lines, keep_stdout=False)
            s = lines.summary or {}
            parent = s.get("snapshot_id")
            run = {"phase": phase, "variant": variant, "format": name, "flags": flags, "env": extra,
                   "wall_s": round(time.monotonic() - t0, 3), "rss_mb": rss.result(None),
                   "data_added": s.get("data_added"), "repo_growth": dir_bytes(repo) - before,
                   "error": None if done.ok else done.stderr[-500:]}
            self.results["experiments"].append(run)
            log(f"exp media {name:<24} {phase:<11} wall {run['wall_s']} s, repo +{run['repo_growth']}")
            out.append(run)
        return out

    def run_exp_restores(self, fmt: str, reference_tables: dict | None) -> list[dict]:
        """Loads the latest dump of an experiment into a scratch database: streamed (psql or
        pg_restore, as worker.backups.database does), and for the custom formats also via a seekable file with
        pg_restore -j (the file write is timed as part of it)."""
        from worker.adapters import postgres, process

        variant = f"exp-{fmt}"
        repo = str(self.repo_base(variant) / "pg-database")
        renv = restic_env(repo, str(self.cache_dir(variant)))
        settings = self._settings()
        cenv = postgres.client_env(settings)
        methods = ["stream"] + ([f"file-j{j}" for j in self.args.restore_jobs] if fmt.startswith("custom") else [])
        out = []
        for method in methods:
            scratch = "taiga_scratch"
            self.pg.sql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            self.pg.sql(f'CREATE DATABASE "{scratch}" OWNER "{DB_USER}"')
            run = {"phase": "restore", "variant": variant, "format": fmt, "method": method}
            t0 = time.monotonic()
            with RssWatch(os.getpid(), exclude={w["proc"].pid for w in self.workers.values()}) as rss:
                if method == "stream":
                    loader = (postgres.psql_argv(settings, scratch) if fmt.startswith("plain")
                              else postgres.pg_restore_argv(settings, scratch))
                    prod, cons = process.pipe(["restic", "dump", "latest", "stdin"], loader, producer_env=renv,
                                              consumer_env=cenv)
                    ok, err = prod.ok and cons.ok, prod.stderr + cons.stderr
                else:
                    jobs = method.split("-j")[1]
                    path = self.work / "scratch.dump"
                    with open(path, "wb") as f:
                        p = subprocess.run(["restic", "dump", "latest", "stdin"], env=renv, stdout=f,
                                           stderr=subprocess.PIPE)
                    run["file_write_s"] = round(time.monotonic() - t0, 3)
                    argv = [a for a in postgres.pg_restore_argv(settings, scratch) if a != "--single-transaction"]
                    q = subprocess.run(argv + ["--jobs", jobs, str(path)], env=cenv, capture_output=True, text=True)
                    path.unlink()
                    ok, err = p.returncode == 0 and q.returncode == 0, p.stderr.decode(errors="replace") + q.stderr
            run["wall_s"] = round(time.monotonic() - t0, 3)
            run["rss_mb"] = rss.result(None)
            if not ok:
                run["error"] = err[-1000:]
            elif reference_tables is not None:
                got = dataset.table_checksums(self.conninfo(scratch))
                run["verified"] = got == reference_tables
            self.pg.sql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            self.results["experiments"].append(run)
            log(f"exp restore {fmt:<10} {method:<8} {run['wall_s']} s verified={run.get('verified')} "
                f"{run.get('error', '')[:200]}")
            out.append(run)
        return out


# ------------------------------------------------------------------------------------ the report


def _fmt(v, unit="", nd=1):
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


def summarise(results: dict) -> dict:
    """Per variant and phase: medians over repeats, and the ratios/targets of issue 6."""
    runs = [r for r in results["runs"] if not r.get("error")]
    variants = []
    for r in results["runs"]:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    ds = results["dataset"]
    dataset_bytes = ds["db_bytes"] + ds["media_bytes"]

    def pick(variant, phase):
        return [r for r in runs if r["variant"] == variant and r["phase"] == phase]

    summary = {}
    for v in variants:
        s = {}
        for phase in ("full", "incr", "restore"):
            rs = pick(v, phase)
            if not rs:
                continue
            s[phase] = {
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
            }
        summary[v] = s
    old = summary.get("old", {})
    for v, s in summary.items():
        if v == "old":
            continue
        full, incr, rest = s.get("full", {}), s.get("incr", {}), s.get("restore", {})
        s["ratios"] = {
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
            "restore_vs_old": ratio(rest.get("wall_s"), old.get("restore", {}).get("wall_s")),
            "restore_downtime_vs_old": ratio(rest.get("downtime_s"), old.get("restore", {}).get("downtime_s")),
        }
    if old.get("incr", {}).get("repo_growth") is not None:
        old["incr_growth_pct_of_dataset"] = round(100 * old["incr"]["repo_growth"] / dataset_bytes, 2)
    if old.get("incr", {}).get("data_added") is not None:
        old["incr_added_pct_of_dataset"] = round(100 * old["incr"]["data_added"] / dataset_bytes, 2)
    return summary


def markdown(results: dict) -> str:
    m, ds, summary = results["machine"], results["dataset"], results["summary"]
    lines = [
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
    variants = [v for v in summary if v != "old"]
    old = summary.get("old", {})
    head = "| metric | target | old | " + " | ".join(f"{v} | ratio" for v in variants) + " |"
    lines += [head, "|" + "---|" * (3 + 2 * len(variants))]

    def row(label, target, getter, rgetter=None, unit=" s", nd=1):
        cells = [label, target, _fmt(getter(old), unit, nd) if old else "–"]
        for v in variants:
            cells.append(_fmt(getter(summary[v]), unit, nd))
            cells.append(_fmt(rgetter(summary[v]) if rgetter else None, "×", 2))
        lines.append("| " + " | ".join(cells) + " |")

    g = lambda phase, key: (lambda s: (s.get(phase) or {}).get(key))  # noqa: E731
    r = lambda key: (lambda s: (s.get("ratios") or {}).get(key))  # noqa: E731
    mb = lambda phase, key: (lambda s: ((s.get(phase) or {}).get(key) or 0) / MB  # noqa: E731
                             if (s.get(phase) or {}).get(key) is not None else None)
    def with_range(phase, key):
        def get(s):
            p = s.get(phase) or {}
            if p.get(key) is None:
                return None
            lo, hi = p.get(key.replace("_s", "_range_s"), [None, None])
            return f"{p[key]:.1f} s" + (f" ({lo:.1f}–{hi:.1f})" if p.get("n", 1) > 1 else "")
        return get

    row("full backup wall (median, min–max)", "≤ 0.9× old", with_range("full", "wall_s"), r("full_vs_old"), unit="")
    row("app downtime (backup)", "≤ 0.25× old backup", with_range("full", "downtime_s"), r("downtime_vs_old_backup"),
        unit="")
    row("  … vs old downtime", "", lambda s: None, r("downtime_vs_old_downtime"))
    row("incremental night wall", "≤ 0.3× own full", g("incr", "wall_s"), r("incr_vs_own_full"))
    row("  … vs old incremental", "", lambda s: None, r("incr_vs_old_incr"))
    row("app downtime (incremental night)", "≤ 4 s", g("incr", "downtime_s"), r("incr_downtime_vs_old"))
    def pct_row(label, target, key, pct_key):
        cells = [label, target, (f"{_fmt(mb('incr', key)(old), ' MB')} ({_fmt(old.get(pct_key), ' %', 2)})"
                                 if old else "–")]
        for v in variants:
            cells.append(_fmt(mb("incr", key)(summary[v]), " MB"))
            cells.append(_fmt(r(pct_key)(summary[v]), " % of dataset", 2))
        lines.append("| " + " | ".join(cells) + " |")

    pct_row("incremental data_added (restic, before compression)", "< 5 % of dataset", "data_added",
            "incr_added_pct_of_dataset")
    pct_row("incremental repo growth on disk", "< 5 % of dataset", "repo_growth", "incr_growth_pct_of_dataset")
    row("  … data_added vs old", "", lambda s: None, r("incr_added_vs_old"))
    row("  … repo growth vs old", "", lambda s: None, r("incr_growth_vs_old"))
    row("full backup repo size on disk", "", mb("full", "repo_growth"), None, unit=" MB")
    row("restore wall", "≤ 0.7× old", g("restore", "wall_s"), r("restore_vs_old"))
    row("app downtime (restore)", "", g("restore", "downtime_s"), r("restore_downtime_vs_old"))
    row("queue → start (task-sent → task-started)", "≤ 2 s",
        lambda s: max(0.0, g("full", "queue_to_start_s")(s)) if g("full", "queue_to_start_s")(s) is not None else None,
        unit=" s", nd=3)
    row("CLI `backup --wait` wall (incl. Python start, 0.5 s polling)", "", g("full", "cli_wall_s"))
    row("bookkeeping (wall not covered by quiesce, data steps, resume)", "≤ 1 s", g("full", "bookkeeping_s"), unit=" s", nd=2)
    row("  of which preflight", "", g("full", "preflight_s"), unit=" s", nd=2)
    for phase in ("full", "incr", "restore"):
        row(f"worker peak RSS ({phase})", "≤ 200 MB", g(phase, "rss_worker_mb"), unit=" MB")
    row("worker CPU time per backup job", "", g("full", "worker_cpu_s"), unit=" s", nd=2)
    row("restic peak RSS (full)", "", g("full", "rss_restic_mb"), unit=" MB")
    row("pg_dump peak RSS (full)", "", g("full", "rss_pg_dump_mb"), unit=" MB")
    lines.append("")
    lines.append("Wall times for taiga-backup run from Celery's task-sent to task-succeeded event; for the old "
                 "pipeline from the operator's scale-down to all pods available again. Downtime (both) is from the "
                 "API double's replica history: first scale to 0 → last return to the original count.")
    if results.get("restore_note"):
        lines.append("")
        lines.append(results["restore_note"])

    media = [e for e in results.get("experiments") or [] if e["format"] in MEDIA_EXPERIMENTS]
    if media:
        lines += ["", "#### restic knobs on the media alone (full pass, then a second pass with it as parent)", "",
                  "| knobs | full: wall | full: repo on disk | second pass: wall |", "|---|---|---|---|"]
        for name in dict.fromkeys(e["format"] for e in media):
            full = next((e for e in media if e["format"] == name and e["phase"] == "full"), {})
            second = next((e for e in media if e["format"] == name and e["phase"] == "second-pass"), {})
            knobs = " ".join(full.get("flags") or []) + " ".join(f"{k}={v}" for k, v in (full.get("env") or {}).items())
            lines.append(f"| {name} (`{knobs or 'defaults'}`) | {_fmt(full.get('wall_s'), ' s')} | "
                         f"{_fmt((full.get('repo_growth') or 0) / MB, ' MB', 0)} | {_fmt(second.get('wall_s'), ' s')} |")
    exps = [e for e in results.get("experiments") or [] if e["format"] not in MEDIA_EXPERIMENTS]
    if exps:
        lines += ["", "#### PG_DUMP_FORMAT experiments (database pipeline alone, same argv as the worker)", "",
                  "| format | dump bytes | full: wall | full: repo on disk | night 2: wall | night 2: data_added "
                  "| night 2: repo growth | load (stream) | load (file, pg_restore -j) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for fmt in dict.fromkeys(e["format"] for e in exps):
            es = [e for e in exps if e["format"] == fmt]
            full = next((e for e in es if e["phase"] == "full"), {})
            incr = next((e for e in es if e["phase"] == "incr"), {})
            stream = next((e for e in es if e.get("method") == "stream"), {})
            files = [e for e in es if (e.get("method") or "").startswith("file")]
            ftxt = ", ".join(f"{e['method'].split('-')[1]}: {_fmt(e.get('wall_s'), ' s')}"
                             + (f" (file {e['file_write_s']:.1f} s)" if e.get("file_write_s") is not None else "")
                             + ("" if e.get("verified", True) else " (MISMATCH)") for e in files) or "–"
            lines.append(
                f"| {fmt} | {_fmt((full.get('dump_bytes') or 0) / MB, ' MB', 0)} | {_fmt(full.get('wall_s'), ' s')} | "
                f"{_fmt((full.get('repo_growth') or 0) / MB, ' MB', 0)} | {_fmt(incr.get('wall_s'), ' s')} | "
                f"{_fmt((incr.get('data_added') or 0) / MB, ' MB', 0)} | {_fmt((incr.get('repo_growth') or 0) / MB, ' MB', 0)} | "
                f"{_fmt(stream.get('wall_s'), ' s')}{'' if stream.get('verified', True) else ' (MISMATCH)'} | {ftxt} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB database + 1 GB media")
    ap.add_argument("--formats", default="plain,custom", help="PG_DUMP_FORMAT values to run taiga-backup with")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"), help="directory for the JSON and markdown results")
    ap.add_argument("--repeat", type=int, default=1, help="full backups per pipeline (alternating order; median)")
    ap.add_argument("--fraction", type=float, default=0.01, help="size of the day of changes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--phases", default="full,incr,restore", help="which of full,incr,restore to run")
    ap.add_argument("--no-old", action="store_true", help="skip the old pipeline (e.g. for an RSS-only run)")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS),
                    help=f"db-only format experiments among {','.join(EXPERIMENTS)}; 'none' to skip")
    ap.add_argument("--media-experiments", default=",".join(MEDIA_EXPERIMENTS),
                    help=f"restic knob experiments on the media among {','.join(MEDIA_EXPERIMENTS)}; 'none' to skip")
    ap.add_argument("--restore-jobs", default="1,2", help="pg_restore --jobs values for the file-based load")
    ap.add_argument("--no-verify", action="store_true", help="skip checksumming restored data")
    ap.add_argument("--pod-start-delay", type=float, default=1.0)
    ap.add_argument("--pod-stop-delay", type=float, default=1.0)
    ap.add_argument("--lease", type=int, default=10, help="JOB_LOCK_LEASE of the workers")
    ap.add_argument("--workdir", default=None, help="where data and repositories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--py-spy", default=None, metavar="PATH",
                    help="py-spy binary: record the worker during every taiga-backup job (raw stacks in --out)")
    ap.add_argument("--code", default=None,
                    help="LABEL=DIR[:FORMAT+FORMAT][,...]: run taiga-backup (worker and CLI) from these copies of the "
                         "tree, each as its own variant tb-FORMAT@LABEL (A/B-testing a patch in one run, on the same "
                         "data); formats default to --formats; default: this tree")
    a = ap.parse_args(argv)
    a.formats = [f for f in a.formats.split(",") if f]
    for f in a.formats:
        if f not in WORKER_FORMATS:
            ap.error(f"--formats: {f!r} is not a PG_DUMP_FORMAT ({', '.join(WORKER_FORMATS)})")
    a.phases = [p for p in a.phases.split(",") if p]
    a.experiments = [] if a.experiments in ("", "none") else a.experiments.split(",")
    for e in a.experiments:
        if e not in EXPERIMENTS:
            ap.error(f"--experiments: unknown {e!r}")
    a.media_experiments = [] if a.media_experiments in ("", "none") else a.media_experiments.split(",")
    for e in a.media_experiments:
        if e not in MEDIA_EXPERIMENTS:
            ap.error(f"--media-experiments: unknown {e!r}")
    a.restore_jobs = [int(j) for j in a.restore_jobs.split(",") if j]
    codes = {}
    for item in (a.code or "").split(","):
        if item:
            label, _, rest = item.partition("=")
            path, _, fmts = rest.partition(":")
            if not label or not Path(path, "worker", "cli.py").is_file():
                ap.error(f"--code: expected LABEL=DIR[:FORMAT+FORMAT] with DIR/worker/cli.py, got {item!r}")
            formats = [f for f in fmts.split("+") if f] or a.formats
            if any(f not in WORKER_FORMATS for f in formats):
                ap.error(f"--code: unknown format in {item!r}")
            codes[label] = (Path(path).resolve(), formats)
    a.code = codes or {"": (ROOT, a.formats)}
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    results = bench.results
    results["args"] = {k: v for k, v in vars(args).items()}
    t_start = time.monotonic()
    try:
        bench.start_servers()
        server_version = bench.pg.sql("show server_version")[0][0]
        results["machine"] = machine_info(server_version)
        results["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results["dataset"] = bench.generate()
        tb = {f"tb-{f}" + (f"@{label}" if label else ""): (f, code)
              for label, (code, formats) in args.code.items() for f in formats}
        variants = (["old"] if not args.no_old else []) + list(tb)

        for v, (f, code) in tb.items():
            bench.start_worker(v, f, code)
        bench.settle()
        first = next(iter(bench.workers.values()), None)
        has_restore = bool(first and "taiga_backup.restore" in first["registered"])
        results["restore_available"] = has_restore

        order = list(variants)
        if "full" in args.phases:
            for rnd in range(args.repeat):
                order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
                for v in order:
                    bench.fresh_repos(v)
                    if v == "old":
                        bench.run_old_backup("full")
                    else:
                        bench.run_tb(v, "full", ["backup"], BACKUP_DEPLOYMENTS)
            for e in args.experiments:
                bench.run_exp_dump(e, "full")
            for e in args.media_experiments:
                bench.run_exp_media(e)

        if "incr" in args.phases:
            log(f"applying a day of changes (fraction {args.fraction}) ...")
            results["changes"] = dataset.apply_day_of_changes(bench.conninfo(), str(bench.media), seed=2,
                                                               fraction=args.fraction)
            ch = results["changes"]
            results["changes_summary"] = (f"{sum(ch['inserted'].values())} rows inserted, "
                                          f"{sum(ch['updated'].values())} updated, {sum(ch['deleted'].values())} "
                                          f"deleted, {ch['media_files_added']} files "
                                          f"({ch['media_bytes_added'] / MB:.1f} MB) added")
            order = list(reversed(order))
            for v in order:
                if v == "old":
                    bench.run_old_backup("incr")
                else:
                    bench.run_tb(v, "incr", ["backup"], BACKUP_DEPLOYMENTS)
            for e in args.experiments:
                bench.run_exp_dump(e, "incr")

        if "restore" in args.phases:
            reference = None
            if not args.no_verify:
                reference = {"tables": dataset.table_checksums(bench.conninfo()),
                             "media": dataset.tree_digest(str(bench.media))}
            for e in args.experiments:
                bench.run_exp_restores(e, reference["tables"] if reference else None)
            order = list(reversed(order))
            for v in order:
                if v == "old":
                    bench.verify(bench.run_old_restore(), reference)
                elif has_restore:
                    run = bench.run_tb(v, "restore", ["restore", "--snapshot", "latest", "--no-safety-backup"],
                                       RESTORE_DEPLOYMENTS)
                    bench.verify(run, reference)
            if not has_restore:
                results["restore_note"] = ("taiga-backup restore: not available (the worker has no "
                                           "`taiga_backup.restore` task yet).")
                log(results["restore_note"])
    finally:
        results["machine"] = results.get("machine") or {}
        results["machine"]["loadavg_at_end"] = loadavg()
        results["total_seconds"] = round(time.monotonic() - t_start, 1)
        bench.stop_servers()
        if not args.keep and not args.workdir:
            shutil.rmtree(bench.work, ignore_errors=True)
        elif args.keep:
            log(f"work directory kept: {bench.work}")

    results["summary"] = summarise(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"results-scale{args.scale:g}-{stamp}"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    md = markdown(results)
    (out / f"{name}.md").write_text(md)
    print(md)
    log(f"results written to {out / name}.json / .md (total {results['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
