"""The image, built from docker/Dockerfile and run for real with podman.

A worker container (host network, read-only root file system, uid 999, secrets mounted as files)
against the throwaway PostgreSQL, Redis and Kubernetes API double of tests/conftest.py; `backup
--wait` and `restore --wait` from second containers; the same byte-exact checks as the other
round-trip tests. Why through the image and not the venv: the image is what users run — its Python,
restic and pg_dump, its user, its entrypoint and its read-only layout are only tested here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from testkit import dataset
from testkit.restore_checks import kept_state, live_state, side_copies

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECRETS = "/run/secrets/taiga-backup"
KUBECONFIG = "/run/kube/config"


def chown_tree(path, uid=999, gid=999) -> None:
    os.chown(path, uid, gid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(top, name), uid, gid)


class Containers:
    """Runs the image the way the chart does: everything the worker reads comes from the site, with
    its files mounted and only *_FILE paths in the environment."""

    def __init__(self, podman, image, site, tmp_path):
        self.podman, self.image, self.site = podman, image, site
        self.names: list[str] = []
        secrets = tmp_path / "container-secrets"
        secrets.mkdir()
        (secrets / "restic-password").write_text(site.password_file.read_text())
        (secrets / "postgres-password").write_text(site.db_password + "\n")
        (secrets / "broker-url").write_text(site.env["CELERY_BROKER_URL"] + "\n")
        chown_tree(secrets)
        for path in secrets.iterdir():
            path.chmod(0o400)  # readable by uid 999 only, as a Secret volume with defaultMode 0400
        os.chmod(site.kube.kubeconfig, 0o644)
        chown_tree(site.repo)
        chown_tree(site.media)
        self.mounts = [
            "--volume", f"{secrets}:{SECRETS}:ro",
            "--volume", f"{site.kube.kubeconfig}:{KUBECONFIG}:ro",
            "--volume", f"{site.repo}:/repo",
            "--volume", f"{site.media}:/media",
        ]
        env = {
            "CELERY_BROKER_URL_FILE": f"{SECRETS}/broker-url",
            "RESTIC_REPOSITORY": "/repo",
            "RESTIC_PASSWORD_FILE": f"{SECRETS}/restic-password",
            "POSTGRES_PASSWORD_FILE": f"{SECRETS}/postgres-password",
            "BACKUP_FILES_DIR": "/media",
            "KUBECONFIG": KUBECONFIG,
            "RESTORE_CHOWN": "999:999",
        }
        for key in ("POSTGRES_HOST", "POSTGRES_DB", "POSTGRES_USER", "KUBE_NAMESPACE", "QUIESCE_DEPLOYMENTS",
                    "RESTORE_QUIESCE_DEPLOYMENTS", "QUIESCE_TIMEOUT", "RESUME_TIMEOUT", "JOB_LOCK_LEASE"):
            env[key] = site.env[key]
        assert not any(site.db_password in v or "restic-secret" in v for v in env.values())
        self.env = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]

    def base_args(self, name: str, hostname: str) -> list[str]:
        self.names.append(name)
        return ["--name", name, "--hostname", hostname, "--network", "host", "--no-healthcheck",
                "--read-only", "--user", "999:999",
                "--tmpfs", "/var/lib/taiga-backup:rw,mode=1777", "--tmpfs", "/var/cache/taiga-backup:rw,mode=1777",
                *self.mounts, *self.env]

    def start_worker(self) -> str:
        name = f"tb-worker-{uuid.uuid4().hex[:8]}"
        self.podman("run", "--detach", *self.base_args(name, name), self.image)  # the image's CMD
        return name

    def run(self, *command: str, timeout: float = 240) -> subprocess.CompletedProcess:
        name = f"tb-cli-{uuid.uuid4().hex[:8]}"
        return self.podman("run", "--rm", *self.base_args(name, name), self.image, *command, check=False,
                           timeout=timeout)

    def wait_ready(self, worker: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.podman("exec", worker, "taiga-backup", "ping", "--self-only", "--timeout", "1", check=False)
            if proc.returncode == 0:
                return
            state = self.podman("inspect", "--format", "{{.State.Status}}", worker).stdout.strip()
            if state != "running":
                break
            time.sleep(1)
        raise AssertionError(f"worker container never answered a ping:\n{self.logs(worker)}")

    def logs(self, name: str) -> str:
        proc = self.podman("logs", name, check=False)
        return (proc.stdout + proc.stderr)[-6000:]

    def cleanup(self) -> None:
        for name in self.names:
            self.podman("rm", "--force", "--time", "5", name, check=False)


@pytest.fixture
def containers(podman, image, repos, tmp_path):
    c = Containers(podman, image, repos, tmp_path)
    yield c
    c.cleanup()


def state(site) -> dict:
    """What the app sees (the media root without the restore's kept previous state)."""
    return live_state(site)


def result_of(proc) -> dict:
    """The job's result from `<job> --wait --json` (the CLI prints {"state", "result", ...})."""
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "SUCCESS", outcome
    return outcome["result"]


def test_round_trip_through_the_image(containers, podman, site):
    site.media.joinpath("odd name ü.txt").write_bytes(b"\x00\xffbytes" * 1000)
    chown_tree(site.media)
    before = state(site)
    namespace = site.env["KUBE_NAMESPACE"]
    replicas = site.replicas()

    worker = containers.start_worker()
    containers.wait_ready(worker)

    # The health check pings this container's worker only: from another container (another host
    # name) the same command finds no worker of its own.
    other = containers.run("ping", "--self-only", "--timeout", "2", timeout=60)
    assert other.returncode != 0 and "no worker of instance taiga answered" in other.stderr
    # the chart's liveness probe: the heartbeat file, on the read-only image's writable /tmp
    alive = podman("exec", worker, "taiga-backup", "alive", check=False)
    assert alive.returncode == 0, alive.stderr

    backup = result_of(containers.run("backup", "--wait", "--json"))
    assert backup["state"] == "SUCCESS", backup
    assert set(backup["snapshots"]) == {"files", "pg-database"}
    assert backup["deployments"] == {n: replicas[n] for n in site.env["QUIESCE_DEPLOYMENTS"].split(",")}
    history = site.kube.history(namespace, "taiga-gateway-deployment")
    assert [r for _, r in history][-3:] == [1, 0, 1]  # really quiesced through the API, and back

    dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=7)
    (site.media / "odd name ü.txt").write_bytes(b"changed")
    (site.media / "added after the backup").write_bytes(b"x")
    chown_tree(site.media)  # as Taiga (uid 999) would have written them
    changed = state(site)
    assert changed != before

    restore = result_of(containers.run("restore", "--wait", "--json", "--no-safety-backup"))
    assert restore["state"] == "SUCCESS", restore
    assert restore["backup_id"] == backup["backup_id"]
    assert state(site) == before
    assert side_copies(site) == {"databases": [], "dirs": []}
    # the state it replaced is kept for undo-restore, byte for byte
    marker = ".taiga-backup-media"  # worker.backups.media.MARKER: stays in the media root
    assert kept_state(site, restore["restore_id"]) == {
        "db": changed["db"], "files": {k: v for k, v in changed["files"].items() if k != marker}}
    assert site.replicas() == replicas
    # restored files belong to the image's user (RESTORE_CHOWN=999:999 needs no privilege as 999)
    owners = {(os.lstat(os.path.join(top, n)).st_uid, os.lstat(os.path.join(top, n)).st_gid)
              for top, dirs, files in os.walk(site.media) for n in dirs + files}
    assert owners == {(999, 999)}

    # podman stop = SIGTERM to tini, forwarded to Celery: a warm shutdown, exit status 0.
    started = time.monotonic()
    podman("stop", "--time", "60", worker, timeout=90)
    assert time.monotonic() - started < 55, "the worker ignored SIGTERM and was killed"
    status = podman("inspect", "--format", "{{.State.ExitCode}}", worker).stdout.strip()
    assert status == "0", containers.logs(worker)


def test_image_is_lean_and_runs_as_999(podman, image):
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"image size: {size / 1e6:.0f} MB")
    assert size < 600e6
    probe = podman("run", "--rm", "--network", "host", "--read-only", "--no-healthcheck", image, "sh", "-c",
                   "id -u; id -g; for t in gcc cc make pip pip3 git curl; do command -v $t; done;"
                   " ls /src /tests /opt/venv/lib/python3*/site-packages/tests 2>/dev/null; restic version;"
                   " pg_dump --version; nice -n 10 true && echo nice-works;"  # the background dump is niced
                   " test -w / && echo root-writable; exit 0")
    lines = probe.stdout.split("\n")
    assert lines[:2] == ["999", "999"], probe.stdout
    assert "root-writable" not in probe.stdout
    tools = [line for line in lines[2:] if line.startswith("/")]
    assert tools == [], f"build tools or sources left in the image: {tools}"
    # the restic of the Dockerfile's pin: the one the suite also runs against (scripts/restic.sh)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    pinned = re.search(r"^ARG RESTIC_DEBIAN_VERSION=(\d+\.\d+\.\d+)", dockerfile, re.M)
    assert re.search(rf"^restic {re.escape(pinned.group(1))} ", probe.stdout, re.M), probe.stdout
    assert "pg_dump (PostgreSQL)" in probe.stdout
    assert "nice-works" in lines, probe.stdout
    packages = podman("run", "--rm", "--network", "host", "--no-healthcheck", image, "sh", "-c",
                      "ls /opt/venv/lib/python3*/site-packages").stdout.split()
    for unwanted in ("pytest", "moto", "fakeredis", "jsonschema", "bench", "testkit", "pip", "setuptools"):
        assert unwanted not in packages, unwanted


def test_healthcheck_is_ping_self_only(podman, image):
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    # --format docker keeps HEALTHCHECK (the OCI format drops it)
    assert inspected["Healthcheck"]["Test"] == ["CMD", "taiga-backup", "ping", "--self-only"]
    assert config["User"] == "999:999"
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    labels = config["Labels"]
    for name in ("title", "source", "version", "revision", "created", "licenses"):
        assert labels.get(f"org.opencontainers.image.{name}"), name


def test_entrypoint_forwards_every_cli_subcommand_in_the_image(podman, image):
    """Each CLI subcommand given bare to the image reaches the CLI (its --help), not "not found"."""
    from worker.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    loop = "; ".join(f"/usr/local/bin/docker-entrypoint.sh {c} --help >/dev/null 2>&1 || echo missing {c}"
                     for c in sorted(sub.choices))
    proc = podman("run", "--rm", "--network", "host", "--read-only", "--no-healthcheck", "--entrypoint", "sh",
                  image, "-c", loop)
    assert proc.stdout.split() == [], proc.stdout


def build_context_copy(dest) -> None:
    """The files .dockerignore lets into the build context, copied."""
    import shutil

    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    for rule in rules:
        if rule.startswith("!"):
            src = ROOT / rule[1:].rstrip("/")
            if src.is_dir():
                shutil.copytree(src, dest / src.relative_to(ROOT),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif src.exists():
                (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / src.relative_to(ROOT))
    shutil.copy2(ROOT / ".dockerignore", dest / ".dockerignore")
    (dest / "docker").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "docker" / "Dockerfile", dest / "docker" / "Dockerfile")


def test_rebuild_after_a_source_change_reuses_the_dependency_layer(podman, image, tmp_path):
    """One source file changed: the locked dependencies are not installed again (a cache hit for
    that layer); only the project layers are rebuilt."""
    context = tmp_path / "context"
    context.mkdir()
    build_context_copy(context)
    with open(context / "worker" / "__init__.py", "a") as f:
        f.write(f"\n# changed by the rebuild test {uuid.uuid4()}\n")
    tag = "localhost/taiga-backup:rebuild-test"
    log = tmp_path / "build.log"
    env = {**podman.env, "TAIGA_BACKUP_BUILD_CONTEXT": str(context), "TAIGA_BACKUP_IMAGE": tag,
           "TAIGA_BACKUP_BUILD_LOG": str(log)}
    try:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), "build"], env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        steps = re.split(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: ", log.read_text(), flags=re.M)
        (deps,) = [s for s in steps if s.startswith("RUN") and "pip install -r requirements.lock" in s]
        assert "Using cache" in deps, deps[:2000]
        (project,) = [s for s in steps if s.startswith("RUN") and "pip install --no-deps ." in s]
        assert "Using cache" not in project
    finally:
        podman("rmi", "--force", tag, check=False)
