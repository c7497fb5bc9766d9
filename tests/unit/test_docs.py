"""The documentation stays short and navigable: README length, the two commands at the top, and
every relative link in README.md and docs/*.md resolving (anchors included, GitHub's slug style)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`+[^`]*`+")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _, -, spaces (unicode aware)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path):
    """(line number, target) of every Markdown link and reference definition outside code."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        stripped = _INLINE_CODE.sub("", line)
        ref = _REF_DEF.match(stripped)
        if ref:
            yield number, ref.group(1)
            continue
        for match in _LINK.finditer(stripped):
            yield number, match.group(1)


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def test_slug_follows_github():
    assert slug("How a backup runs") == "how-a-backup-runs"
    assert slug("PG_DUMP_FORMAT: keep `plain` the default") == "pg_dump_format-keep-plain-the-default"
    assert slug("The chat-ops bot's signing key") == "the-chat-ops-bots-signing-key"
    assert slug("Retention (`prune`)") == "retention-prune"


def test_readme_is_at_most_300_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    # the title, then the first code block holds exactly the demo and the test command
    body = [line for line in lines[1:] if line.strip()]
    assert body and body[0].startswith("```"), "the README must open with the commands' code block"
    end = next(i for i in range(1, len(body)) if body[i].startswith("```"))
    commands = [line.split("#", 1)[0].strip() for line in body[1:end]]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_docs_exist():
    names = {path.name for path in DOCS}
    for name in ("operations.md", "chatops.md", "performance.md", "failure-behaviour.md",
                 "security.md", "settings.md", "development.md"):
        assert name in names, f"docs/{name} is missing"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path):
    broken = []
    for number, target in links(path):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{where} (outside the repository)")
            continue
        if anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            broken.append(f"{where} (no heading with this anchor in {dest.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)
