"""The one base class of every failure we expect and can explain.

An `OperatorError` carries a message written for the person on call (what failed, where, what to
do), already free of secrets: it is logged as one line without a traceback and stored as the
job's error. Anything else reaching the top of a job is a bug and is logged with its traceback.
"""

from __future__ import annotations


class OperatorError(RuntimeError):
    """An expected failure, phrased for an operator."""


class JobFailed(OperatorError):
    """A job's first error, already phrased for an operator and free of secrets."""


class RequestInvalid(JobFailed):
    """A request field failed validation; nothing was touched."""


class LeaseBusy(JobFailed):
    """Another job holds the repository lease; nothing was touched (a scheduled job may retry)."""
