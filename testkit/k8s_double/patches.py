"""The three PATCH flavours the official client sends, applied the way the API server applies them.

Why: the client picks the content type from the body (a dict goes out as a strategic merge
patch, a list as an RFC 6902 JSON patch, ``_content_type`` can force a JSON merge patch), and
the product relies on ``None`` deleting an annotation.  Each flavour is implemented far enough
for the patches the product and its tests send: maps merge, lists are replaced (nothing here
patches a list of containers, so strategic merge keys and ``$patch`` directives are left out).
"""

from __future__ import annotations

import copy

from testkit.k8s_double.status import PatchError

CT_JSON_PATCH = "application/json-patch+json"
CT_MERGE_PATCH = "application/merge-patch+json"
CT_SMP = "application/strategic-merge-patch+json"
CT_APPLY_YAML = "application/apply-patch+yaml"

_INVALID = "the server rejected our request due to an error in our request: "


def apply_patch(ctype: str, body, current):
    """Apply a PATCH body to ``current`` according to its content type; returns the new object."""
    if ctype == CT_JSON_PATCH:
        return json_patch(current, body)
    if ctype in (CT_MERGE_PATCH, CT_SMP):
        if not isinstance(body, dict):
            raise PatchError(400, "json: cannot unmarshal " + type(body).__name__
                                  + " into Go value of type map[string]interface {}")
        # A strategic merge patch of maps and scalars is a JSON merge patch.
        return json_merge_patch(current, body)
    raise PatchError(415, f"the body of the request was in an unknown format - accepted media types include: "
                          f"{CT_JSON_PATCH}, {CT_MERGE_PATCH}, {CT_APPLY_YAML}, {CT_SMP}")


def json_merge_patch(target, patch):
    """Apply an RFC 7386 JSON merge patch (``null`` deletes a key); returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _missing(pointer) -> PatchError:
    """The 422 the API server answers for a pointer into nothing."""
    return PatchError(422, _INVALID + f"doc is missing path: \"{pointer}\": missing value")


def _pointer_tokens(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON pointer (``/metadata/annotations/a~1b``) into keys."""
    if pointer == "":
        return []
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise PatchError(422, f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _resolve_parent(doc, tokens, pointer):
    """Walk to the container holding the last token of a pointer."""
    node = doc
    for tok in tokens[:-1]:
        if isinstance(node, dict) and tok in node:
            node = node[tok]
        elif isinstance(node, list) and tok.isdigit() and int(tok) < len(node):
            node = node[int(tok)]
        else:
            raise _missing(pointer)
    return node


def _pointer_get(doc, pointer):
    """Read the value a JSON pointer designates, or fail like the API server."""
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return doc
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _missing(pointer)


def _pointer_add(doc, pointer, value):
    """RFC 6902 ``add``: set a map key or insert into a list; returns the new document."""
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return copy.deepcopy(value)
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list) and last == "-":
        parent.append(copy.deepcopy(value))
    elif isinstance(parent, list) and last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), copy.deepcopy(value))
    elif isinstance(parent, list):
        raise PatchError(422, _INVALID + f"add operation does not apply: doc is missing path: \"{pointer}\"")
    else:
        raise PatchError(422, _INVALID + f"doc is missing path: \"{pointer}\"")
    return doc


def _pointer_remove(doc, pointer):
    """RFC 6902 ``remove``: delete an existing map key or list item; returns the document."""
    tokens = _pointer_tokens(pointer)
    if not tokens:
        raise PatchError(422, _INVALID + "cannot remove the document root")
    _pointer_get(doc, pointer)  # raises if missing
    parent = _resolve_parent(doc, tokens, pointer)
    del parent[tokens[-1] if isinstance(parent, dict) else int(tokens[-1])]
    return doc


def _pointer_replace(doc, pointer, value):
    """RFC 6902 ``replace``: overwrite an existing value; returns the document."""
    _pointer_get(doc, pointer)  # raises if missing
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return copy.deepcopy(value)
    parent = _resolve_parent(doc, tokens, pointer)
    parent[tokens[-1] if isinstance(parent, dict) else int(tokens[-1])] = copy.deepcopy(value)
    return doc


def _pointer_test(doc, pointer, value):
    """RFC 6902 ``test``: the value (and its JSON type) must equal the one given."""
    try:
        current = _pointer_get(doc, pointer)
    except PatchError:
        current = None
    if current != value or type(current) is not type(value):
        raise PatchError(422, _INVALID + f"testing value {pointer} failed: test failed")
    return doc


_OPS = {"add": _pointer_add, "replace": _pointer_replace, "test": _pointer_test,
        "remove": lambda doc, pointer, _value: _pointer_remove(doc, pointer)}


def json_patch(doc, ops):
    """Apply an RFC 6902 JSON patch (add/remove/replace/test); returns a new document."""
    if not isinstance(ops, list):
        raise PatchError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(422, _INVALID + f"invalid JSON patch operation {op!r}")
        apply = _OPS.get(op["op"])
        if apply is None:
            raise PatchError(422, _INVALID + f"Unexpected kind: {op['op']}")
        doc = apply(doc, op["path"], op.get("value"))
    return doc
