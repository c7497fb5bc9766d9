"""Throwaway real servers for tests and the demo: redis-server, a PostgreSQL cluster made with
initdb in a temporary directory and moto's S3 server, each on a free port, stopped afterwards.

As root (CI), PostgreSQL runs as the `postgres` system user: initdb refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _end(proc: subprocess.Popen | None, kill: bool) -> None:
    """Stops a server child unless it has already exited, and reaps it: SIGTERM for a clean stop,
    SIGKILL where a test wants the server gone as in a crash."""
    if proc and proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(10)


class RedisServer:
    """redis-server on a free port; stop()/start() keep the port (for restart tests). With `tls`
    ({"cert", "key", "ca"} file paths) it speaks only TLS and requires client certificates."""

    def __init__(self, password: str | None = None, tls: dict | None = None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tb-redis-")
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"],
                     "--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"]]
        conf = os.path.join(self.dir, "redis.conf")  # the password in a file, not in our argv
        Path(conf).write_text(f"requirepass {self.password}\n" if self.password else "")
        argv = ["redis-server", conf, *ports, "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        _end(self.proc, kill=False)
        self.proc = None

    def restart(self) -> "RedisServer":
        """Stopped and started again on the same port, empty (no persistence): what a Redis pod
        without a volume does when it restarts."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MotoServer:
    """moto's S3 server on a free port, for restic's s3: repositories. stop() kills it, so the
    endpoint vanishes at once as a crashed one would (fault tests); start() again keeps the port.
    Its output is appended to the file `log`, kept with the test's other traces."""

    def __init__(self, log: str | os.PathLike):
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        with open(self.log, "ab") as log:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        _end(self.proc, kill=True)
        self.proc = None


def pg_bindir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    raise RuntimeError("PostgreSQL server binaries (initdb) not found: apt-get install postgresql")


class PostgresCluster:
    """A private cluster with password (scram) authentication on 127.0.0.1."""

    def __init__(self, superuser_password: str = "postgres-test-pw"):
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="tb-pg-")
        self.data = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "sock")
        self.superuser = "postgres"
        self.superuser_password = superuser_password
        self.bindir = pg_bindir()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv, **kw):
        return subprocess.run([*self._as, *argv], check=True, capture_output=True, text=True, **kw)

    def start(self) -> "PostgresCluster":
        os.makedirs(self.socket_dir)
        pwfile = os.path.join(self.root, "pw")
        Path(pwfile).write_text(self.superuser_password + "\n")
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", self.superuser, "--pwfile", pwfile,
                  "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        os.unlink(pwfile)
        self.resume()
        return self

    def resume(self) -> None:
        """(Re)starts the server on the same port and data directory."""
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-o", opts, "-w", "-t", "60",
                  "-l", os.path.join(self.data, "server.log"), "start")

    def halt(self, mode: str = "fast") -> None:
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop")

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return (f"host=127.0.0.1 port={self.port} user={self.superuser} password={self.superuser_password} "
                f"dbname={dbname}")

    def sql(self, statement: str, dbname: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.admin_conninfo(dbname), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def create_app_db(self, dbname: str, user: str, password: str) -> None:
        """A database owned by an app role that may create databases (restore drops/recreates)."""
        from psycopg import sql as q
        import psycopg

        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_roles where rolname=%s", (user,)).fetchone()
            if not exists:
                conn.execute(q.SQL("create role {} login createdb password {}").format(q.Identifier(user), q.Literal(password)))
            conn.execute(q.SQL("create database {} owner {}").format(q.Identifier(dbname), q.Identifier(user)))

    def cleanup(self) -> None:
        try:
            self.halt("immediate")
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
