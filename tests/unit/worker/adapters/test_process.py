"""worker/adapters/process.py: children run from an argv list with a minimal environment, die at
their deadline, and a pipe's failure names the end that failed, with its stderr."""

from __future__ import annotations

import time

import pytest

from worker.adapters import process


def test_pipe_reports_both_ends_and_stderr():
    env = process.child_env()
    prod, cons = process.pipe(["sh", "-c", "echo partial; echo boom >&2; exit 3"], ["cat"],
                              producer_env=env, consumer_env=env)
    assert (prod.returncode, cons.returncode) == (3, 0)
    assert cons.stdout == b"partial\n"
    assert "boom" in str(prod.error()) and "exit status 3" in str(prod.error())


def test_run_kills_at_the_deadline():
    t0 = time.monotonic()
    done = process.run(["sleep", "30"], env=process.child_env(), timeout=0.5)
    assert done.timed_out and time.monotonic() - t0 < 5
    assert "deadline" in str(done.error())


def test_run_refuses_a_shell_string():
    with pytest.raises(TypeError):
        process.run("echo hi", env=process.child_env())


def test_child_env_is_minimal(monkeypatch):
    monkeypatch.setenv("POSTGRES_PASSWORD", "leak-me")
    env = process.child_env({"ONLY": "this"})
    assert "POSTGRES_PASSWORD" not in env and env["ONLY"] == "this"


def test_a_pipe_at_its_deadline_blames_the_consumer_that_stopped_reading():
    """`yes` fills the pipe and blocks writing; the consumer never reads: the consumer is why."""
    env = process.child_env()
    prod, cons = process.pipe(["yes"], ["sleep", "30"], producer_env=env, consumer_env=env, timeout=1)
    assert prod.timed_out and cons.timed_out  # both were killed
    assert cons.stalled and not prod.stalled
    assert "sleep did not finish before its deadline" in str(cons.error())


def test_a_pipe_at_its_deadline_blames_the_producer_that_wrote_nothing():
    """The consumer waits on an empty pipe for a producer that never writes: the producer is why."""
    env = process.child_env()
    prod, cons = process.pipe(["sleep", "30"], ["cat"], producer_env=env, consumer_env=env, timeout=1)
    assert prod.timed_out and cons.timed_out
    assert prod.stalled and not cons.stalled


def test_a_producer_that_ended_before_the_deadline_did_not_time_out():
    env = process.child_env()
    prod, cons = process.pipe(["echo", "all of it"], ["sleep", "30"], producer_env=env, consumer_env=env, timeout=1)
    assert prod.ok and not prod.timed_out
    assert cons.timed_out and cons.stalled
