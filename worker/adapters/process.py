"""The one place that starts child processes (pg_dump, psql, pg_restore, restic).

Rules kept here so no caller can forget them: argv lists and never a shell; a minimal
environment plus only the secrets that child needs; stderr always captured (and drained
concurrently so a chatty child cannot dead-lock on a full pipe) and surfaced, redacted, in the
error; every run has a deadline after which the whole process group is killed; both ends of a
pipe are waited for and checked.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from worker.errors import OperatorError
from worker.redact import redact, register

_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
STDERR_TAIL = 4000


class ProcessError(OperatorError):
    """A child failed; the message names the program, its exit status and the end of its stderr."""

    def __init__(self, what: str, returncode: int | None, stderr: str, timed_out: bool = False):
        self.what = what
        self.returncode = returncode
        self.stderr = redact(stderr.strip())[-STDERR_TAIL:]
        self.timed_out = timed_out
        if timed_out:
            head = f"{what} did not finish before its deadline and was killed"
        else:
            head = f"{what} failed (exit status {returncode})"
        super().__init__(f"{head}: {self.stderr}" if self.stderr else head)


@dataclass
class Completed:
    what: str
    returncode: int | None
    stdout: bytes
    stderr: str
    timed_out: bool = False  # still running at the deadline, and killed
    # at the deadline, this end held the pipeline up (the other waited on it): the one to blame.
    # Set for a single run that timed out; for a pipe, see _stalled_end
    stalled: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error(self) -> ProcessError:
        return ProcessError(self.what, self.returncode, self.stderr, self.timed_out)

    def check(self, ok_codes: Iterable[int] = (0,)) -> "Completed":
        if self.timed_out or self.returncode not in tuple(ok_codes):
            raise self.error()
        return self


def child_env(extra: dict | None = None) -> dict:
    """A clean environment: only what any child needs, plus the given variables."""
    env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    for key, value in (extra or {}).items():
        if value is not None:
            env[key] = str(value)
    return env


def passthrough(names: Iterable[str], secrets: Iterable[str] = (), source=None) -> dict:
    """Variables a child may need from this process's environment (a proxy, a backend's
    settings): each of `names` that is set, as it is; each of `secrets` read from NAME_FILE into
    NAME - the child's environment only, never argv - and registered with the redactor. A secret
    set in plain NAME is refused: a pod's plain variables show in `kubectl describe` and in every
    child's /proc/<pid>/environ."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in names if source.get(name)}
    for name in secrets:
        if source.get(name):
            raise OperatorError(f"{name} is set in plain text: give it as {name}_FILE (a file holding it)")
        path = source.get(name + "_FILE")
        if path:
            try:
                value = open(path).read().strip("\r\n")
            except OSError as exc:
                raise OperatorError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
            register(value)
            env[name] = value
    return env


def _drain(stream, sink: list, on_line: Callable[[bytes], None] | None = None, keep: bool = True) -> threading.Thread:
    def pump():
        try:
            if on_line is None:
                for chunk in iter(lambda: stream.read(65536), b""):
                    sink.append(chunk)
            else:
                for line in stream:
                    if keep:
                        sink.append(line)
                    try:
                        on_line(line)
                    except Exception:  # a progress callback must never break the data path
                        pass
        finally:
            stream.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_all(procs: list, deadline: float | None, before_kill: Callable[[], None] | None = None) -> list[bool]:
    """Waits for every process; on the deadline kills them all (`before_kill` runs first, while
    they still stand as the deadline found them). Returns, per process, whether it was still
    running then and killed: one that had already ended on its own did not time out."""
    killed = [False] * len(procs)
    for proc in procs:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            killed = [p.poll() is None for p in procs]
            if before_kill is not None:
                before_kill()
            for p in procs:
                _kill_group(p)
            for p in procs:
                p.wait()
            break
    return killed


def _pipe_fill(pid: int, fd: int) -> float | None:
    """How full (0..1) the pipe on a child's file descriptor is; None when it cannot be told (not
    a pipe, the child gone, /proc not readable). The pipe is reopened through /proc (a read end,
    non-blocking, held for one ioctl): this process closed its own copy so that the producer
    gets EPIPE when the consumer dies."""
    try:
        end = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        queued = struct.unpack("i", fcntl.ioctl(end, termios.FIONREAD, b"\0" * 4))[0]
        return queued / fcntl.fcntl(end, fcntl.F_GETPIPE_SZ)
    except OSError:
        return None
    finally:
        os.close(end)


def _stalled_end(producer_pid: int) -> str | None:
    """Which end of producer | consumer held the pipeline up when the deadline found both still
    running: "consumer", "producer", or None when it cannot be told.

    Judged by the pipe between them: a producer blocked writing into a full pipe is not the cause,
    it waits for its reader (pg_dump behind a restic that stalls on a dead S3 endpoint); a pipe
    with little in it means the consumer waits for data. The pipe's fill level (FIONREAD) is
    chosen over the producer's /proc/<pid>/wchan ("pipe_write"): wchan reads "0" where kernel
    addresses are hidden (containers, kptr_restrict), its names differ between kernel versions
    ("pipe_wait" before 5.5), and it shows one thread only; the fill level is the data path
    itself. A writer blocks only when the pipe has no free slot (small writes are merged into the
    last page), so half full is a wide margin between the two cases."""
    fill = _pipe_fill(producer_pid, 1)
    if fill is None:
        return None
    return "consumer" if fill >= 0.5 else "producer"


def _popen(argv, env, cwd, stdin, stdout, nice: int | None = None):
    """`nice`: started through nice(1), so every thread the child makes has the lower priority
    (setpriority on a started child reaches only its first thread)."""
    if isinstance(argv, str):
        raise TypeError("argv must be a list, never a shell string")
    argv = ["nice", "-n", str(int(nice)), *argv] if nice else list(argv)
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
        start_new_session=True, close_fds=True,
    )


def run(
    argv: list[str],
    *,
    env: dict,
    what: str | None = None,
    cwd: str | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
    on_line: Callable[[bytes], None] | None = None,
    keep_stdout: bool = True,
) -> Completed:
    """Runs one program to completion. Does not raise on a non-zero exit: call .check().
    keep_stdout=False (with on_line) streams output larger than memory without keeping it."""
    what = what or os.path.basename(argv[0])
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = _popen(argv, env, cwd, subprocess.PIPE if input is not None else subprocess.DEVNULL, subprocess.PIPE)
    out, err = [], []
    threads = [_drain(proc.stdout, out, on_line, keep_stdout), _drain(proc.stderr, err)]
    if input is not None:
        try:
            proc.stdin.write(input)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
    timed_out = any(_wait_all([proc], deadline))
    for t in threads:
        t.join()
    return Completed(what, proc.returncode, b"".join(out), b"".join(err).decode("utf-8", "replace"), timed_out,
                     timed_out)


def _start_two(producer, consumer, producer_env, consumer_env, cwd, *, direct: bool, nice: int | None = None):
    """Producer and consumer; the consumer reads the producer directly, or (direct=False) a pipe
    this process writes. A consumer that cannot start takes the producer down with it."""
    p1 = _popen(producer, producer_env, cwd, subprocess.DEVNULL, subprocess.PIPE, nice)
    try:
        p2 = _popen(consumer, consumer_env, cwd, p1.stdout if direct else subprocess.PIPE, subprocess.PIPE, nice)
    except BaseException:
        _kill_group(p1)
        p1.wait()
        raise
    return p1, p2


def _finish_two(p1, p2, threads, deadline, first: tuple, second: tuple,
                judge: bool = False) -> tuple[Completed, Completed]:
    """Waits for both (killing both at the deadline) and for their output drains. The end still
    running at the deadline is `stalled`; when both were, `judge` (p1's stdout is the pipe into
    p2) tells which by the pipe (_stalled_end), else neither is named."""
    verdict = []
    before_kill = (lambda: verdict.append(_stalled_end(p1.pid))) if judge else None
    killed1, killed2 = _wait_all([p1, p2], deadline, before_kill)
    for t in threads:
        t.join()
    if killed1 and killed2:
        stalled1, stalled2 = (verdict or [None])[0] == "producer", (verdict or [None])[0] == "consumer"
    else:
        stalled1, stalled2 = killed1, killed2
    (what1, err1), (what2, out2, err2) = first, second
    return (Completed(what1, p1.returncode, b"", b"".join(err1).decode("utf-8", "replace"), killed1, stalled1),
            Completed(what2, p2.returncode, b"".join(out2), b"".join(err2).decode("utf-8", "replace"), killed2,
                      stalled2))


def pipe(
    producer: list[str],
    consumer: list[str],
    *,
    producer_env: dict,
    consumer_env: dict,
    producer_what: str | None = None,
    consumer_what: str | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    on_consumer_line: Callable[[bytes], None] | None = None,
    keep_stdout: bool = True,
    nice: int | None = None,
) -> tuple[Completed, Completed]:
    """producer | consumer without a shell. Returns both results; the caller decides what a
    failure of either end means (a consumer that succeeded on a truncated stream is the
    dangerous case, so both are always reported). `nice`: both ends run at that lower priority
    (work that must not slow something running beside it)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    p1, p2 = _start_two(producer, consumer, producer_env, consumer_env, cwd, direct=True, nice=nice)
    p1.stdout.close()  # only the consumer holds the read end now, so it sees EOF / the producer sees EPIPE
    err1, out2, err2 = [], [], []
    threads = [_drain(p1.stderr, err1), _drain(p2.stdout, out2, on_consumer_line, keep_stdout),
               _drain(p2.stderr, err2)]
    return _finish_two(p1, p2, threads, deadline, (producer_what or os.path.basename(producer[0]), err1),
                       (consumer_what or os.path.basename(consumer[0]), out2, err2), judge=True)


def head(argv: list[str], *, env: dict, nbytes: int, what: str | None = None,
         timeout: float = 120) -> tuple[bytes, Completed]:
    """The first `nbytes` of a program's output, then the program is stopped (its whole group):
    a probe of a stream that may be larger than memory. The result's returncode is that of the
    killed program; callers judge the bytes, and use the stderr when there are none."""
    what = what or os.path.basename(argv[0])
    proc = _popen(argv, env, None, subprocess.DEVNULL, subprocess.PIPE)
    err: list = []
    drain = _drain(proc.stderr, err)
    timer = threading.Timer(timeout, _kill_group, (proc,))
    timer.start()
    try:
        data = b""
        while len(data) < nbytes:
            chunk = proc.stdout.read(nbytes - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        timer.cancel()
        _kill_group(proc)
        proc.stdout.close()
        proc.wait()
        drain.join()
    return data, Completed(what, proc.returncode, data, b"".join(err).decode("utf-8", "replace"))


def relay(
    producer: list[str],
    consumer: list[str],
    *,
    producer_env: dict,
    consumer_env: dict,
    first: bytes = b"",
    watch: Callable[[bytes], None] | None = None,
    last: Callable[[bool], bytes | None] | None = None,
    producer_what: str | None = None,
    consumer_what: str | None = None,
    timeout: float | None = None,
) -> tuple[Completed, Completed]:
    """producer | (this process) | consumer: every chunk passes through `watch`, and what ends
    the consumer's input is decided only once the producer has exited: `last(producer_ok)`
    returns the bytes to send after the stream (or None). Why: a loader must commit only a
    stream that is known to be whole - psql commits at end of input whatever it has read. A
    `watch` that raises stops the stream (the consumer sees end of input without `last`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    p1, p2 = _start_two(producer, consumer, producer_env, consumer_env, None, direct=False)
    err1, out2, err2, failed = [], [], [], []

    def pump():
        try:
            p2.stdin.write(first)
            for chunk in iter(lambda: p1.stdout.read(65536), b""):
                if watch:
                    watch(chunk)
                p2.stdin.write(chunk)
            p1.stdout.close()
            p1.wait()
            tail = last(p1.returncode == 0) if last else None
            if tail:
                p2.stdin.write(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the consumer stopped (its exit status says why)
        except Exception as exc:  # the watcher refused the stream
            failed.append(exc)
            _kill_group(p1)
        finally:
            for stream in (p1.stdout, p2.stdin):
                try:
                    stream.close()
                except OSError:
                    pass

    threads = [_drain(p1.stderr, err1), _drain(p2.stdout, out2), _drain(p2.stderr, err2),
               threading.Thread(target=pump, daemon=True)]
    threads[-1].start()
    results = _finish_two(p1, p2, threads, deadline, (producer_what or os.path.basename(producer[0]), err1),
                          (consumer_what or os.path.basename(consumer[0]), out2, err2))
    if failed:
        raise failed[0]
    return results
