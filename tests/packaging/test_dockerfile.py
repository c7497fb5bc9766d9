"""The Dockerfile, .dockerignore and docker/entrypoint.sh, read and run without a container engine.

Fast checks of what the image promises (pinned base, restic from Debian's signed archive, non-root user, tini, health
check, lock-file install, build-time-only CA bundle) and of the entrypoint run with /bin/sh, so a
mistake shows up even where podman cannot run. tests/packaging/test_image.py builds and runs the
image itself.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "taiga-backup"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERIGNORE = ROOT / ".dockerignore"


def default_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (also inside a continuation, as Docker does) and blank lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults and the stages: {image, alias, args, instructions}."""
    global_args, stages = {}, []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = rest.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"image": expand(words[0], global_args), "alias": alias, "args": {}, "instructions": []})
            continue
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if not stages:
                global_args[name] = default
                continue
            stages[-1]["args"][name] = default or global_args.get(name, "")
        assert stages, f"{keyword} before the first FROM"
        stages[-1]["instructions"].append((keyword, rest))
    return global_args, stages


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def final_stage() -> dict:
    return dockerfile_stages()[1][-1]


def stage_instructions(stage: dict, keyword: str) -> list[str]:
    return [rest for kw, rest in stage["instructions"] if kw == keyword]


def test_base_images_are_pinned():
    _, stages = dockerfile_stages()
    aliases = set()
    for stage in stages:
        image = stage["image"]
        if image not in aliases:
            assert "$" not in image, f"unresolved image {image}"
            name = image.split("@")[0]
            tag = name.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest" or "@sha256:" in image, f"unpinned base image {image}"
            assert image.startswith("python:3.11-slim-bookworm"), image
        if stage["alias"]:
            aliases.add(stage["alias"])


def test_image_runs_as_non_root():
    stage = final_stage()
    users = stage_instructions(stage, "USER")
    assert users, "the final stage sets no USER"
    user = expand(users[-1], stage["args"])
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes can check runAsNonRoot; 999 is Taiga's uid (see docker/README.md).
    assert uid.isdigit() and int(uid) != 0, user
    assert (uid, gid) == ("999", "999")
    values = default_values()
    assert values["podSecurityContext"]["runAsUser"] == 999
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["restore"]["chown"] == "999:999"


def test_entrypoint_is_tini_and_default_command_is_the_worker():
    stage = final_stage()
    (entrypoint,) = stage_instructions(stage, "ENTRYPOINT")
    entrypoint = json.loads(entrypoint)
    assert entrypoint[0].endswith("/tini") and entrypoint[1] == "--"
    assert any(re.search(r"apt-get install .*\btini\b", run) for run in stage_instructions(stage, "RUN"))
    copies = [c.split() for c in stage_instructions(stage, "COPY")]
    assert ["docker/entrypoint.sh", entrypoint[2]] in copies
    (cmd,) = stage_instructions(stage, "CMD")
    assert json.loads(cmd) == ["taiga-backup", "worker", "--beat"]


def test_healthcheck_pings_the_worker():
    (healthcheck,) = stage_instructions(final_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    assert "--timeout=" in options and "--interval=" in options
    # --self-only: another worker on the same broker answering must not make this one look healthy
    assert json.loads(command) == ["taiga-backup", "ping", "--self-only"]


def test_sources_are_build_arguments():
    """One Dockerfile for production and CI: where Python and the PostgreSQL client come from are
    arguments (defaults: the python image, PGDG), not a patched copy; restic is the same for both."""
    global_args, stages = dockerfile_stages()
    assert global_args["PYTHON_SOURCE"] == "image"
    assert final_stage()["args"]["PG_SOURCE"] == "pgdg"
    runs = " ".join(stage_instructions(final_stage(), "RUN"))
    assert re.search(r"pgdg\)", runs) and re.search(r"debian\)", runs)
    assert '"$PYTHON_SOURCE" = debian' in runs and '"$PYTHON_SOURCE" = debian' in " ".join(
        r for s in stages if s["alias"] == "build" for r in stage_instructions(s, "RUN"))


def test_ca_bundle_is_a_build_argument_only():
    """The proxy's CA bundle is mounted into the build and named by PIP_CERT for the pip commands;
    it never becomes an ENV (which the image would keep) and is never copied."""
    _, stages = dockerfile_stages()
    for stage in stages:
        for keyword, rest in stage["instructions"]:
            if keyword in ("ENV", "COPY", "ADD"):
                assert "PIP_CERT" not in rest and ".crt" not in rest, (keyword, rest)
    (build,) = [s for s in stages if s["alias"] == "build"]
    assert "PIP_CERT" in build["args"]
    assert "PIP_CERT" not in final_stage()["args"]


def test_final_stage_has_no_build_tools_or_sources():
    stage = final_stage()
    runs = " ".join(stage_instructions(stage, "RUN"))
    for tool in ("build-essential", "gcc", "curl", "python3-venv", "python3-pip", "git"):
        assert not re.search(rf"apt-get install[^;&]*\b{re.escape(tool)}\b", runs), tool
    copies = [c.split() for c in stage_instructions(stage, "COPY")]
    assert all(c[0].startswith("--from=") or c[0] == "docker/entrypoint.sh" for c in copies), copies
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_dependencies_are_a_layer_of_their_own():
    """requirements.lock is copied and installed before the sources: a change to a source file
    reuses the dependency layer (test_image.py checks it on a real rebuild)."""
    (build,) = [s for s in dockerfile_stages()[1] if s["alias"] == "build"]
    ins = build["instructions"]
    copy_lock = ins.index(("COPY", "requirements.lock ./"))
    install = next(i for i, (k, r) in enumerate(ins) if k == "RUN" and "pip install -r requirements.lock" in r)
    copy_all = ins.index(("COPY", ". ."))
    assert copy_lock < install < copy_all


def test_restic_is_debians_package_of_a_pinned_suite_and_version():
    """restic comes from Debian's signed archive (verified by apt, for the build's architecture),
    pinned to one version: the one scripts/restic.sh fetches for the test suite."""
    _, stages = dockerfile_stages()
    (stage,) = [s for s in stages if s["alias"] == "restic"]
    assert stage["args"]["RESTIC_DEBIAN_SUITE"] == "trixie"
    assert re.fullmatch(r"\d+\.\d+\.\d+-[\w.+~]+", stage["args"]["RESTIC_DEBIAN_VERSION"])
    (run,) = [r for r in stage_instructions(stage, "RUN") if "restic" in r]
    assert 'download "restic=${RESTIC_DEBIAN_VERSION}"' in run  # exactly that version, or the build stops
    assert "Dir::Etc::sourcelist=" in run and "Dir::State::Lists=" in run  # the base's apt state untouched
    assert "curl" not in run and "github" not in run.lower()
    assert ["--from=restic", "/usr/local/bin/restic", "/usr/local/bin/restic"] in [
        c.split() for c in stage_instructions(final_stage(), "COPY")
    ]
    script = (ROOT / "scripts" / "restic.sh").read_text()
    assert "ARG $1=" in script and "RESTIC_DEBIAN_VERSION" in script  # reads the pin, does not repeat it
    assert stage["args"]["RESTIC_DEBIAN_VERSION"] not in script


def test_postgres_client_comes_from_pgdg_for_pg_major():
    stage = final_stage()
    assert re.fullmatch(r"\d+", stage["args"]["PG_MAJOR"])
    runs = " ".join(stage_instructions(stage, "RUN"))
    assert '"postgresql-client-${PG_MAJOR}"' in runs
    assert "apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" in runs
    assert "signed-by=" in runs


OCI_LABELS = {"title", "description", "source", "licenses", "version", "revision", "created", "url",
              "documentation"}


def image_labels(stage: dict) -> dict[str, str]:
    """The final stage's LABELs, with its ARG defaults (and the global ones) filled in."""
    args = {**dockerfile_stages()[0], **stage["args"]}
    labels = {}
    for rest in stage_instructions(stage, "LABEL"):
        for word in shlex.split(rest):
            key, _, value = word.partition("=")
            labels[key] = expand(value, args)
    return labels


def test_oci_labels_come_from_build_arguments():
    """Every standard OCI label is set; version, revision and created come from ARGs the release
    workflow passes (a local build says dev / unknown / the epoch), after every RUN and COPY, so a new
    revision rebuilds no layer."""
    stage = final_stage()
    labels = image_labels(stage)
    assert {k.removeprefix("org.opencontainers.image.") for k in labels} == OCI_LABELS
    oci = {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()}
    assert (oci["version"], oci["revision"], oci["created"]) == ("dev", "unknown", "1970-01-01T00:00:00Z")
    assert datetime.fromisoformat(oci["created"])  # RFC 3339
    assert oci["source"].startswith("https://") and oci["documentation"].startswith(oci["source"])
    assert stage["args"]["PG_MAJOR"] in oci["description"]
    keywords = [kw for kw, _ in stage["instructions"]]
    assert keywords.index("LABEL") > max(i for i, kw in enumerate(keywords) if kw in ("RUN", "COPY"))


def test_project_is_installed_from_the_lock():
    _, stages = dockerfile_stages()
    runs = [r for s in stages for r in stage_instructions(s, "RUN")]
    lock = [i for i, r in enumerate(runs) if "pip install -r requirements.lock" in r]
    project = [i for i, r in enumerate(runs) if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert lock and project and lock[0] < project[0]


# .dockerignore --------------------------------------------------------------------------------------


def dockerignore_includes(path: str) -> bool:
    """A small model of Docker's matcher: rules in order, the last matching one wins, and a rule
    matching a parent directory matches everything below it. Supports the forms .dockerignore uses
    (`*`, `!dir/`, `**/name`, `**/*.ext`)."""
    included = True
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(p, tail) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(c, pattern) and c.count("/") == pattern.count("/") for c in candidates)
        if hit:
            included = negate
    return included


def test_dockerignore_lets_in_what_the_build_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = ["pyproject.toml", "requirements.lock", "docker/entrypoint.sh"]
    if isinstance(project["project"].get("readme"), str):
        needed.append(project["project"]["readme"])
    needed += [f"{pkg.replace('.', '/')}/__init__.py" for pkg in setuptools.get("packages", [])]
    needed += [f"{mod}.py" for mod in setuptools.get("py-modules", [])]
    missing = [p for p in needed if not dockerignore_includes(p)]
    assert missing == []


def test_dockerignore_keeps_out_the_rest():
    for path in (".git/config", ".venv/bin/python", "tests/packaging/test_image.py", "testkit/servers.py",
                 "bench/run.py", "helm/taiga-backup/values.yaml", "docs/operations.md",
                 "worker/__pycache__/cli.cpython-311.pyc", ".env", "taiga_backup.egg-info/PKG-INFO"):
        assert not dockerignore_includes(path), path


# ---------------------------------------------------------------------------------------------------
# docker/entrypoint.sh, run outside Docker


def entrypoint_subcommands() -> set[str]:
    """The words of the entrypoint's `case` pattern that get `taiga-backup` put in front."""
    (pattern,) = re.findall(r"^\s*(-\*\|[a-z|-]+)\)\s*$", ENTRYPOINT.read_text(), re.M)
    return set(pattern.split("|")) - {"-*"}


def test_entrypoint_forwards_exactly_the_cli_subcommands():
    from worker.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert entrypoint_subcommands() == set(sub.choices)


def test_entrypoint_is_posix_sh():
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert re.search(r"^set -eu$", text, re.M)
    assert os.access(ENTRYPOINT, os.X_OK)
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


@pytest.fixture
def stub_path(tmp_path):
    """A PATH whose taiga-backup and other-tool stubs print their PID and arguments."""
    for name in ("taiga-backup", "other-tool"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho "{name} pid=$$"\nfor a in "$@"; do echo "arg=$a"; done\nexit ${{STUB_EXIT:-0}}\n')
        stub.chmod(0o755)
    return f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def run_entrypoint(args, path, **env):
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": path, **env},
    )
    out, err = proc.communicate(timeout=30)
    return proc, out.splitlines(), err


def test_entrypoint_execs_its_arguments(stub_path):
    proc, out, _ = run_entrypoint(["other-tool", "a b", "--flag", ""], stub_path)
    assert proc.returncode == 0
    # exec: the command replaced the shell, so it runs with the shell's PID.
    assert out == [f"other-tool pid={proc.pid}", "arg=a b", "arg=--flag", "arg="]


def test_entrypoint_prefixes_subcommands(stub_path):
    proc, out, _ = run_entrypoint(["backup", "--wait"], stub_path)
    assert out == [f"taiga-backup pid={proc.pid}", "arg=backup", "arg=--wait"]
    proc, out, _ = run_entrypoint(["--help"], stub_path)
    assert out[1:] == ["arg=--help"]


def test_entrypoint_defaults_to_worker_with_beat(stub_path):
    proc, out, _ = run_entrypoint([], stub_path)
    assert out == [f"taiga-backup pid={proc.pid}", "arg=worker", "arg=--beat"]


def test_entrypoint_passes_the_exit_status_on(stub_path):
    proc, _, _ = run_entrypoint(["ping"], stub_path, STUB_EXIT="3")
    assert proc.returncode == 3
    proc, _, err = run_entrypoint(["no-such-command-here"], stub_path)
    assert proc.returncode == 127 and err



def test_pyproject_ships_every_package():
    """`pip install .` in the image installs only what pyproject.toml lists: a subpackage missing from
    it works in the editable dev install and breaks the image (ModuleNotFoundError at start)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools.get("packages", [])
    if isinstance(packages, dict):  # packages.find: include patterns
        patterns = packages.get("find", {}).get("include", ["*"])
        covered = lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)  # noqa: E731
    else:
        covered = lambda name: name in packages  # noqa: E731
    shipped_roots = {p.split(".")[0] for p in (packages if isinstance(packages, list) else [])} or {"worker", "tasks"}
    missing = []
    for top in sorted(shipped_roots):
        for init in sorted((ROOT / top).rglob("__init__.py")):
            name = ".".join(init.parent.relative_to(ROOT).parts)
            if "__pycache__" not in name and not covered(name):
                missing.append(name)
    assert missing == [], f"pyproject.toml [tool.setuptools] packages lacks {missing}"
