"""Rows of the Taiga-like tables other than history and attachments: users, projects, stories,
tasks, issues.

Why generators: the bulk load streams them straight into COPY, so memory stays flat at any
scale; each one also records, per item, the project and creation time (an Items) that the
children generated after it (tasks below stories, history, attachments) are made consistent
with.  The day of changes reuses the item generators with `day` set (all created that day).
"""

from __future__ import annotations

import functools
import itertools

from testkit.dataset.common import T0, T_SPAN, Items, hex_bits, ts


def user_rows(rng, text, n, photo_paths):
    """(rows, full names) of users 1..n; a list, since history needs the names afterwards."""
    first = ["Ana", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Inés", "Jon",
             "Kofi", "Lena", "Mateo", "Nora", "Olu", "Pia", "Quinn", "Rafael", "Sanne", "Tomás"]
    last = ["Smith", "García", "Müller", "Kowalski", "Nguyen", "O'Brien", "Rossi", "Tanaka",
            "Dubois", "Jensen", "Silva", "Novak", "Okafor", "Berg", "Ivanova", "Costa"]
    names = []
    rows = []
    for i in range(1, n + 1):
        fn, ln = rng.choice(first), rng.choice(last)
        full = f"{fn} {ln}"
        names.append(full)
        uname = f"{fn.lower()}.{ln.lower().replace(chr(39), '')}{i}"
        joined = T0 + rng.random() * T_SPAN * 0.5
        rows.append((
            i,
            "pbkdf2_sha256$260000$%s$%s" % (hex_bits(rng, 64), hex_bits(rng, 256)),
            ts(joined + rng.random() * T_SPAN * 0.5) if rng.random() < 0.8 else None,
            i == 1,
            uname,
            f"{uname}@example.org",
            rng.random() < 0.95,
            full,
            "#%06x" % rng.getrandbits(24),
            text.rand_text(rng, 120, empty=0.6, cap=2000),
            photo_paths.get(i),
            ts(joined),
            rng.choice(["en", "en", "de", "es", "fr"]),
            rng.choice(["Europe/Berlin", "UTC", "America/New_York", "Asia/Tokyo"]),
            False,
            hex_bits(rng, 128),
            True,
        ))
    return rows, names


def project_rows(rng, text, n, n_users, logo_paths):
    """Projects 1..n, created in the first 30 % of the span; 30 % public."""
    perms = ["view_project", "view_milestones", "view_us", "view_tasks", "view_issues", "view_wiki_pages"]
    for i in range(1, n + 1):
        name = "%s %s" % (rng.choice(text.words).capitalize(), rng.choice(text.words))
        created = T0 + rng.random() * T_SPAN * 0.3
        public = rng.random() < 0.3
        yield (
            i, name, "%s-%d" % (name.lower().replace(" ", "-"), i),
            text.rand_text(rng, 400, cap=5000),
            ts(created), ts(created + rng.random() * T_SPAN * 0.7),
            rng.randint(1, n_users), not public,
            rng.randrange(40) if rng.random() < 0.7 else None,
            text.tags(rng), True, rng.random() < 0.5, rng.random() < 0.8,
            logo_paths.get(i),
            perms[:3] if public else [], perms if public else [],
        )


@functools.lru_cache(maxsize=8)
def _project_weights(n_projects: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(n_projects)))


def pick_projects(rng, n_projects: int, k: int) -> list[int]:
    """Project sizes are skewed (a few big projects), like real deployments."""
    return [p + 1 for p in rng.choices(range(n_projects), cum_weights=_project_weights(n_projects), k=k)]


def created_after(rng, start: float) -> float:
    """A time between `start` and the end of the span (children after their parent)."""
    end = T0 + T_SPAN
    return start + rng.random() * max(0.0, end - start)


def _created_at(rng, i: int, last: int, start: float) -> float:
    """Ids grow with time (row i of `last` is created around i/last through the span)."""
    return max(T0 + T_SPAN * i / last, start) + rng.random() * 3 * 86400


def _maybe_user(rng, n_users, p_none=0.2):
    return None if rng.random() < p_none else rng.randint(1, n_users)


def _register_item(rng, i: int, p: int, last: int, start: float, refs, items: Items, day) -> float:
    """Item i's ref in project p (refs advanced), creation time (that `day`, or by its id after
    `start`), recorded in items; returns the creation time."""
    refs[p] = refs.get(p, 0) + 1
    created = day + rng.random() * 86400 if day else _created_at(rng, i, last, start)
    items.project.append(p)
    items.created.append(int(created))
    return created


def us_rows(rng, text, ids, projects, refs, n_users, items: Items, proj_created, day=None):
    """User story rows for `ids` in `projects`; `refs` holds each project's last ref (shared by
    stories, tasks and issues, as in Taiga) and is advanced."""
    last = ids[-1] if len(ids) else 1
    for i, p in zip(ids, projects):
        created = _register_item(rng, i, p, last, proj_created.get(p, T0), refs, items, day)
        closed = rng.random() < 0.6 and day is None
        yield (
            i, refs[p], p, rng.randint(1, n_users), _maybe_user(rng, n_users), rng.randint(1, 6),
            text.subject(rng), text.rand_text(rng, 900, empty=0.15), text.tags(rng),
            closed, rng.random() < 0.05, "", i * 100, i * 100,
            ts(created), ts(created + rng.random() * 86400 * 30),
            ts(created + 86400 * rng.randint(1, 90)) if closed else None,
            None, rng.randint(1, 12), False, rng.random() < 0.1,
        )


def task_rows(rng, text, ids, n_us, us_items: Items, refs, n_users, n_projects, items: Items,
              day=None, us_id_base=1):
    """Task rows for `ids`; 80 % belong to a story of about the same age (from us_items, whose
    first id is us_id_base), the others to a random project only."""
    last = ids[-1] if len(ids) else 1
    first = ids[0] if len(ids) else 1
    for i in ids:
        if n_us and rng.random() < 0.8:
            # tasks belong to stories of about the same age
            k = int(n_us * (i - first) / max(1, last - first + 1)) + rng.randint(-20, 3)
            k = min(n_us - 1, max(0, k))
            us = us_id_base + k
            p = us_items.project[k]
            start = us_items.created[k]
        else:
            us = None
            p = pick_projects(rng, n_projects, 1)[0]
            start = T0
        created = _register_item(rng, i, p, last, start, refs, items, day)
        done = rng.random() < 0.7 and day is None
        yield (
            i, refs[p], p, us, rng.randint(1, n_users), _maybe_user(rng, n_users),
            rng.randint(1, 5), text.subject(rng), text.rand_text(rng, 450, empty=0.3),
            text.tags(rng), rng.random() < 0.03, "",
            ts(created), ts(created + rng.random() * 86400 * 10),
            ts(created + 86400 * rng.randint(1, 30)) if done else None,
            i, i, rng.random() < 0.02, rng.randint(1, 8),
        )


def issue_rows(rng, text, ids, projects, refs, n_users, items: Items, proj_created, day=None):
    """Issue rows for `ids` in `projects` (refs as for us_rows)."""
    last = ids[-1] if len(ids) else 1
    for i, p in zip(ids, projects):
        created = _register_item(rng, i, p, last, proj_created.get(p, T0), refs, items, day)
        done = rng.random() < 0.5 and day is None
        blocked = rng.random() < 0.04
        yield (
            i, refs[p], p, rng.randint(1, n_users), _maybe_user(rng, n_users), rng.randint(1, 7),
            rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 3),
            text.subject(rng), text.rand_text(rng, 900, empty=0.1), text.tags(rng),
            blocked, text.text(rng, 80) if blocked else "",
            ts(created), ts(created + rng.random() * 86400 * 20),
            ts(created + 86400 * rng.randint(1, 60)) if done else None,
            None, rng.randint(1, 10),
        )
