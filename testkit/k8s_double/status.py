"""The API server's error envelope: ``kind: Status`` bodies and the exception that carries one.

Why a module of its own: every part of the double (patching, selectors, validation, routing,
injected faults) fails the same way a real API server does - an HTTP code plus a Status body
with the server's reason and wording - and the official client's error handling only gets
tested if those bodies look real.
"""

from __future__ import annotations

import datetime as _dt

# Status "reason" and default message per HTTP code, as the API server words them.
_REASONS = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the object has been modified"),
    410: ("Expired", "too old resource version"),
    415: ("UnsupportedMediaType", "the body of the request was in an unknown format"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: ("InternalError", "Internal error occurred: injected failure"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
}


def rfc3339(epoch: float) -> str:
    """Format a wall-clock time the way the API server does (second precision, 'Z')."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, message: str | None = None, reason: str | None = None,
                details: dict | None = None) -> dict:
    """Build a ``kind: Status`` failure object, the API server's error envelope."""
    default_reason, default_message = _REASONS.get(code, ("", "unknown error"))
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message if message is not None else default_message,
        "reason": reason if reason is not None else default_reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def conflict(name: str) -> "PatchError":
    """The 409 a write with a stale ``metadata.resourceVersion`` gets (optimistic locking)."""
    return PatchError(409, f'Operation cannot be fulfilled on deployments.apps "{name}": the object has '
                           "been modified; please apply your changes to the latest version and try again",
                      details={"name": name, "group": "apps", "kind": "deployments"})


class PatchError(Exception):
    """A request that cannot be applied; carries the HTTP status and message to send back."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.details = details

    def status(self) -> dict:
        """The Status object the server answers with for this error."""
        return status_body(self.code, self.message, self.reason, self.details)
