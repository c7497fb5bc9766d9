"""restic's environment in a real cluster: a proxy, short-lived AWS credentials (IRSA), a private
CA, another backend's credentials. A real restic, started by the product's own code, talks to
its repository through a local HTTP proxy started here; while it waits for the proxy's answer
its /proc/<pid>/environ is read: it carries the declared variables - secrets read from their
*_FILE - and nothing undeclared."""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker import redact
from worker.adapters.restic import ResticError
from worker.backups import layout
from worker.errors import OperatorError
from worker.settings import Settings

BACKEND = "rest:http://restic-backend.example:8000"  # not loopback: Go never proxies localhost


def restic_children() -> list[int]:
    """Our restic children (the product starts each in a session of its own, still our child)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == "restic" and int(rest[1]) == os.getpid():
            found.append(int(entry.name))
    return found


class Proxy(ThreadingHTTPServer):
    """An HTTP proxy that never forwards: it records each request (absolute-form, as a client
    speaks to a proxy) and the environment of the restic that sent it, then answers 404."""

    daemon_threads = True

    def __init__(self):
        self.requests, self.environs = [], []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805
                self.requests.append(handler.path)
                for pid in restic_children():
                    raw = Path(f"/proc/{pid}/environ").read_bytes()
                    self.environs.append(dict(item.split("=", 1) for item in raw.decode().split("\0") if item))
                handler.send_response(404)
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            do_HEAD = do_POST = do_GET

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def proxy():
    server = Proxy()
    yield server
    server.shutdown()
    server.server_close()


def secret_file(tmp_path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


def test_restic_gets_the_declared_variables_and_secrets_from_files_only(proxy, tmp_path, monkeypatch):
    password = secret_file(tmp_path, "restic-password", "restic-pw-for-env-test")
    declared = {
        "HTTP_PROXY": f"http://127.0.0.1:{proxy.server_port}", "NO_PROXY": "storage.internal",
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/taiga-backup",
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"), "AWS_PROFILE": "taiga",
        "B2_ACCOUNT_ID": "b2-account", "OS_AUTH_URL": "https://keystone.example/v3",
        "RESTIC_REST_USERNAME": "taiga",
    }
    secrets = {"AWS_SESSION_TOKEN": "session-token-7f3a9c", "B2_ACCOUNT_KEY": "b2-key-51d0e2",
               "AZURE_ACCOUNT_KEY": "azure-key-8c1b44", "OS_PASSWORD": "swift-pw-2e9d71",
               "RESTIC_REST_PASSWORD": "rest-pw-a4c3b2"}
    for name, value in declared.items():
        monkeypatch.setenv(name, value)
    for name, value in secrets.items():
        monkeypatch.setenv(name + "_FILE", secret_file(tmp_path, name.lower(), value))
    monkeypatch.setenv("SOME_UNDECLARED_VARIABLE", "must-not-reach-restic")
    monkeypatch.setenv("POSTGRES_PASSWORD", "db-pw-not-for-restic")
    settings = Settings.from_env({**os.environ, "RESTIC_REPOSITORY": BACKEND, "RESTIC_PASSWORD_FILE": password})

    with pytest.raises(ResticError):
        layout.repository(settings, layout.FILES).init_if_missing(timeout=60)

    assert proxy.requests and proxy.requests[0].startswith("http://restic-backend.example:8000/files/")
    env = proxy.environs[0]
    for name, value in {**declared, **secrets}.items():
        assert env.get(name) == value, name
    assert not any(name.endswith("_FILE") and name[:-5] in secrets for name in env)
    assert env["RESTIC_REPOSITORY"] == BACKEND + "/files" and env["RESTIC_PASSWORD_FILE"] == password
    allowed = {*layout.RESTIC_ENV, *layout.RESTIC_SECRETS, "RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE",
               "RESTIC_CACHE_DIR", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "PATH", "HOME",
               "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR"}
    assert set(env) <= allowed, sorted(set(env) - allowed)
    assert all(redact.redact(f"echo {value}") == "echo ***" for value in secrets.values())


def test_a_secret_given_in_plain_environment_is_refused_naming_its_file_form(tmp_path, monkeypatch):
    monkeypatch.setenv("B2_ACCOUNT_KEY", "plain-b2-key-in-the-pod-spec")
    settings = Settings.from_env({**os.environ, "RESTIC_REPOSITORY": BACKEND,
                                  "RESTIC_PASSWORD_FILE": secret_file(tmp_path, "pw", "restic-pw")})
    with pytest.raises(OperatorError, match="B2_ACCOUNT_KEY_FILE"):
        layout.repository(settings, layout.FILES)


def test_the_settings_reference_lists_exactly_the_declared_variables():
    text = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    section = text.split("## restic's environment", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| ") and "---" not in line)
    named = set(re.findall(r"`([A-Za-z][A-Za-z0-9_]+)`", table))
    expected = set(layout.RESTIC_ENV) | {name + "_FILE" for name in layout.RESTIC_SECRETS}
    assert named == expected, (sorted(named - expected), sorted(expected - named))
