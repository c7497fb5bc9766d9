"""History entries (history_historyentry): creations, field changes, comments, deletions.

Why their own module: history is the largest table of a real Taiga and the jsonb-heavy part of
its dumps, so its entries mimic Taiga's shapes (snapshot, diff + values, comment + html).
"""

from __future__ import annotations

import html
import itertools
import json

from testkit.dataset.common import hex_bits, ts
from testkit.dataset.rows import created_after


_STATUS_NAMES = {"1": "New", "2": "Ready", "3": "In progress", "4": "Ready for test", "5": "Done",
                 "6": "Archived"}


def history_row(rng, text, key, project, created, user_id, user_name, kind=None):
    """One history entry: creation, change (jsonb diff + values), comment or snapshot.

    `kind` forces "create", "comment" or "delete"; without it the entry is a snapshot (15 %), a
    comment (30 %) or a field change.
    """
    user = json.dumps({"pk": user_id, "name": user_name}, ensure_ascii=False)
    r = rng.random() if kind is None else -1.0
    diff = snapshot = values = None
    comment = comment_html = ""
    is_snapshot = False
    htype = 1
    if kind == "create" or 0.0 <= r < 0.15:
        htype = 2
        is_snapshot = True
        snapshot = _snapshot(rng, text, user_id)
        diff = "{}"
        values = "{}"
    elif kind == "comment" or 0.15 <= r < 0.45:
        comment = text.rand_text(rng, 250, cap=8000)
        comment_html = "<p>" + html.escape(comment).replace("\n\n", "</p>\n<p>") + "</p>"
        diff = "{}"
        values = json.dumps({"users": {str(user_id): user_name}}, ensure_ascii=False)
    elif kind == "delete":
        htype = 3
        diff = "{}"
        values = "{}"
    else:
        diff, values = _field_change(rng, text, user_id, user_name)
    return (
        hex_bits(rng, 128), user, ts(created), htype, is_snapshot, key, diff, snapshot, values,
        comment, comment_html, None, False, project,
    )


def _snapshot(rng, text, user_id) -> str:
    """The jsonb snapshot of an item as Taiga stores it with a creation entry."""
    return json.dumps({
        "ref": rng.randrange(1, 5000), "subject": text.subject(rng),
        "description": text.rand_text(rng, 700, empty=0.2),
        "description_html": "", "owner": user_id, "status": rng.randint(1, 6),
        "tags": text.tags(rng), "assigned_to": None, "attachments": [],
        "is_blocked": False, "blocked_note": "",
    }, ensure_ascii=False)


def _field_change(rng, text, user_id, user_name) -> tuple[str, str]:
    """(diff, values) jsonb of one changed field: status, assignee, subject, description or tags."""
    field = rng.choice(["status", "status", "assigned_to", "subject", "description", "tags"])
    if field == "status":
        a, b = rng.sample(sorted(_STATUS_NAMES), 2)
        d = {"status": [int(a), int(b)]}
        v = {"status": {a: _STATUS_NAMES[a], b: _STATUS_NAMES[b]}}
    elif field == "assigned_to":
        d = {"assigned_to": [None, user_id]}
        v = {"users": {str(user_id): user_name}}
    elif field == "subject":
        d = {"subject": [text.subject(rng), text.subject(rng)]}
        v = {}
    elif field == "description":
        old = text.rand_text(rng, 600)
        d = {"description": [old, old + "\n\n" + text.rand_text(rng, 200)],
             "description_diff": [None, text.text(rng, 120)]}
        v = {}
    else:
        d = {"tags": [text.tags(rng), text.tags(rng)]}
        v = {}
    return json.dumps(d, ensure_ascii=False), json.dumps(v, ensure_ascii=False)


def history_rows(rng, text, n, kinds_items, user_names):
    """`n` entries on random items, each after its item's creation.

    kinds_items: list of (content type name, first id, Items); every item is equally likely.
    """
    n_users = len(user_names)
    sizes = [len(it.project) for _, _, it in kinds_items]
    cum = list(itertools.accumulate(sizes))
    total = cum[-1]
    for _ in range(n):
        x = rng.randrange(total)
        j = 0
        while x >= cum[j]:
            j += 1
        ct, first, it = kinds_items[j]
        k = x - (cum[j - 1] if j else 0)
        uid = rng.randint(1, n_users)
        yield history_row(rng, text, f"{ct}:{first + k}", it.project[k],
                          created_after(rng, it.created[k]), uid, user_names[uid - 1])
