"""The settings table in worker/settings.py is the only place a setting's name and default are
written in code: the documentation must say the same, row for row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.settings import BY_ENV, SETTINGS, Settings, SettingsError, read

ROOT = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|", re.M)


def documented(path: Path) -> dict[str, str | None]:
    """{setting: default} from a Markdown table whose first column is the variable in backticks;
    a secret documented as NAME_FILE counts as NAME."""
    rows = {}
    for name, default in ROW.findall(path.read_text()):
        if name.endswith("_FILE") and name[:-5] in BY_ENV and BY_ENV[name[:-5]].secret:
            name = name[:-5]
        rows[name] = None if default in ("—", "-", "") else default.strip("`")
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/settings.md"])
def test_every_documented_setting_exists_with_the_code_default(doc):
    rows = documented(ROOT / doc)
    assert rows, f"{doc} has no settings table"
    unknown = sorted(set(rows) - set(BY_ENV))
    assert not unknown, f"{doc} documents settings the code does not read: {unknown}"
    wrong = {name: (shown, BY_ENV[name].default) for name, shown in rows.items() if shown != BY_ENV[name].default}
    assert not wrong, f"{doc}: documented default differs from worker/settings.py (doc, code): {wrong}"


def test_the_reference_documents_every_setting():
    missing = [s.env for s in SETTINGS if s.env not in documented(ROOT / "docs/settings.md")]
    assert not missing, f"docs/settings.md lacks {missing}"


def test_every_field_comes_from_the_table_or_a_documented_combination():
    combined = {"pg_host", "pg_port", "verify_pg_host", "verify_pg_port", "redis_ssl"}
    from_table = {s.field for s in SETTINGS if s.field}
    assert set(Settings.__dataclass_fields__) == from_table | combined


def test_read_parses_defaults_and_refuses_bad_values(tmp_path):
    assert read("JOB_LOCK_LEASE", {}) == 30
    assert read("QUIESCE_DEPLOYMENTS", {"QUIESCE_DEPLOYMENTS": ""}) == ()
    assert read("BACKUP_SCHEDULE", {"BACKUP_SCHEDULE": "off"}) is None
    with pytest.raises(SettingsError, match="JOB_LOCK_LEASE: must be at least 5"):
        read("JOB_LOCK_LEASE", {"JOB_LOCK_LEASE": "1"})
    with pytest.raises(SettingsError, match="RESTIC_REPOSITORY must be set"):
        read("RESTIC_REPOSITORY", {})


def test_the_instance_is_a_dns_label_and_no_key_word_of_the_old_layout():
    assert read("TAIGA_INSTANCE", {"TAIGA_INSTANCE": "taiga-b"}) == "taiga-b"
    for bad in ("Taiga", "a_b", "-a", "a" * 64):
        with pytest.raises(SettingsError, match="TAIGA_INSTANCE: .* is not a DNS label"):
            read("TAIGA_INSTANCE", {"TAIGA_INSTANCE": bad})
    with pytest.raises(SettingsError, match="reserved"):
        read("TAIGA_INSTANCE", {"TAIGA_INSTANCE": "report"})
