"""What the API server rejects when a Deployment or its Scale is written, in its words.

Why: the product's retry logic keys on HTTP codes (409 is retried, 4xx otherwise reported),
so a patch must fail here exactly when it would fail against a real server: a stale
``metadata.resourceVersion`` is a 409 Conflict, a wrong type a 400, a bad value or an edited
selector a 422 ``Invalid`` with ``details.causes``.
"""

from __future__ import annotations

import copy
import json

from testkit.k8s_double.status import PatchError, conflict


def _check_metadata(name: str, namespace: str, old: dict, new) -> dict:
    """The edited object's ``metadata`` after the name/namespace/resourceVersion/type checks."""
    if not isinstance(new, dict):
        raise PatchError(400, "json: cannot unmarshal into Go value of type v1.Deployment")
    meta = new.get("metadata") or {}
    if not isinstance(meta, dict):
        raise PatchError(400, "json: cannot unmarshal into Go struct field Deployment.metadata")
    if meta.get("name") not in (None, name):
        raise PatchError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
    if meta.get("namespace") not in (None, "", namespace):
        raise PatchError(400, "the namespace of the provided object does not match the namespace sent on the request")
    rv = meta.get("resourceVersion")
    if rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
        raise conflict(name)
    for field in ("annotations", "labels"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise PatchError(400, f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} "
                                  "of type map[string]string")
    return meta


def _spec_problems(spec: dict, old: dict) -> list[str]:
    """Field errors of an edited DeploymentSpec, as ``"field: message"`` strings."""
    invalid = []
    replicas = spec["replicas"]
    if replicas < 0:
        invalid.append(f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0")
    if spec.get("selector") != old["spec"]["selector"]:
        invalid.append("spec.selector: Invalid value: " + json.dumps(spec.get("selector"))
                       + ": field is immutable")
    tmpl_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    match = (old["spec"]["selector"].get("matchLabels") or {})
    if any(tmpl_labels.get(k) != v for k, v in match.items()):
        invalid.append("spec.template.metadata.labels: Invalid value: " + json.dumps(tmpl_labels)
                       + ": `selector` does not match template `labels`")
    if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
        invalid.append("spec.template.spec.containers: Required value")
    return invalid


def validate_deployment(key, old: dict, new) -> dict:
    """Check an edited Deployment (``old`` is the stored one); return the object to store."""
    namespace, name = key
    meta = _check_metadata(name, namespace, old, new)
    spec = new.get("spec")
    if not isinstance(spec, dict):
        raise PatchError(422, f'Deployment.apps "{name}" is invalid: spec: Required value',
                         details={"name": name, "group": "apps", "kind": "Deployment"})
    spec = copy.deepcopy(spec)
    if spec.get("replicas") is None:
        spec["replicas"] = 1  # API default
    if isinstance(spec["replicas"], bool) or not isinstance(spec["replicas"], int):
        raise PatchError(400, "json: cannot unmarshal into Go struct field DeploymentSpec.spec.replicas of type int32")
    invalid = _spec_problems(spec, old)
    if invalid:
        raise PatchError(422, f'Deployment.apps "{name}" is invalid: ' + ", ".join(invalid),
                         details={"name": name, "group": "apps", "kind": "Deployment",
                                  "causes": [{"reason": "FieldValueInvalid", "message": m.split(": ", 1)[1],
                                              "field": m.split(":", 1)[0]} for m in invalid]})
    stored = copy.deepcopy(old)
    for field in ("annotations", "labels"):
        if meta.get(field):
            stored["metadata"][field] = dict(meta[field])
        else:
            stored["metadata"].pop(field, None)  # empty maps are omitted
    stored["spec"] = spec
    return stored


def validate_scale(name: str, current: dict, new) -> int:
    """Check an edited autoscaling/v1 Scale (``current`` is the served one); return its replicas."""
    if not isinstance(new, dict):
        raise PatchError(400, "the body of the request was in an unknown format")
    meta = new.get("metadata") or {}
    if meta.get("name") not in (None, name):
        raise PatchError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
    rv = meta.get("resourceVersion")
    if rv not in (None, "") and rv != current["metadata"]["resourceVersion"]:
        raise conflict(name)
    replicas = (new.get("spec") or {}).get("replicas")
    if replicas is None:
        replicas = 0  # autoscaling/v1 ScaleSpec.replicas is omitempty: absent means 0
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise PatchError(400, "json: cannot unmarshal into Go struct field ScaleSpec.spec.replicas of type int32")
    if replicas < 0:
        raise PatchError(422, f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {replicas}: '
                              "must be greater than or equal to 0",
                         details={"name": name, "group": "autoscaling", "kind": "Scale"})
    return replicas
