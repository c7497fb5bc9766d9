"""Label and field selectors for list and watch requests, with the API server's 400s on bad syntax.

Why: the product finds a deployment's pods through the label selector its Scale reports
(``app=...`` or a comma-separated set of ``key=value``), and the double's tests use the
set-based and field forms too; a selector the double got wrong would make quiesce wait for
the wrong pods.
"""

from __future__ import annotations

import re

from testkit.k8s_double.status import PatchError

_SEL_SET = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_SEL_EQ = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_SEL_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")
_FIELD_TERM = re.compile(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$")

# The field labels the API server supports per kind (a subset: the ones worth filtering on).
POD_FIELDS = {
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "status.phase": lambda p: p["status"].get("phase", ""),
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "spec.restartPolicy": lambda p: p["spec"].get("restartPolicy", ""),
}
DEPLOYMENT_FIELDS = {
    "metadata.name": lambda d: d["metadata"]["name"],
    "metadata.namespace": lambda d: d["metadata"]["namespace"],
}


def _split_selector(text: str) -> list[str]:
    """Split a selector on commas that are not inside ``in (...)`` value sets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _label_term(term: str):
    """One requirement of a label selector as a predicate over a labels dict."""
    m = _SEL_SET.match(term)
    if m:
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
        if op == "in":
            return lambda l, k=key, vs=values: l.get(k) in vs
        return lambda l, k=key, vs=values: l.get(k) not in vs
    m = _SEL_EQ.match(term)
    if m:
        key, op, value = m.groups()
        if op == "!=":
            return lambda l, k=key, v=value: l.get(k) != v
        return lambda l, k=key, v=value: k in l and l[k] == v
    m = _SEL_EXISTS.match(term)
    if m:
        neg, key = m.groups()
        if neg:
            return lambda l, k=key: k not in l
        return lambda l, k=key: k in l
    raise PatchError(400, f"unable to parse requirement: found '{term.strip()}', expected: "
                          "in, notin, =, ==, !=, gt, lt", reason="BadRequest")


def parse_label_selector(text: str | None):
    """Compile a label selector string into a predicate over a labels dict.

    Supports ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)`` and
    ``a notin (x,y)``, comma-separated (AND).  Raises PatchError(400) on
    syntax errors like the API server does.
    """
    if not text:
        return lambda labels: True
    preds = [_label_term(term) for term in _split_selector(text)]
    return lambda labels: all(p(labels or {}) for p in preds)


def parse_field_selector(text: str | None, fields: dict):
    """Compile a field selector (``status.phase=Running,metadata.name!=x``) into a predicate."""
    if not text:
        return lambda obj: True
    preds = []
    for term in _split_selector(text):
        m = _FIELD_TERM.match(term)
        if not m:
            raise PatchError(400, f"invalid selector: '{text}'; can't understand '{term}'")
        key, op, value = m.groups()
        if key not in fields:
            raise PatchError(400, f'field label not supported: {key}')
        getter = fields[key]
        if op == "!=":
            preds.append(lambda o, g=getter, v=value: g(o) != v)
        else:
            preds.append(lambda o, g=getter, v=value: g(o) == v)
    return lambda obj: all(p(obj) for p in preds)
