"""Several worker processes on one port (SO_REUSEPORT): the kernel spreads connections.

Every worker's listening socket is bound before the fork, so all of them accept once
``ready`` is printed; each worker builds its event loop after the fork (an epoll handle
must never be shared across ``fork``). Workers die with the supervisor
(``PR_SET_PDEATHSIG``), so even a supervisor killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from smesh.bench.models.common import ModelError, Options, Ready, ResumingContext, log

Serve = Callable[[Options, ResumingContext, socket.socket, Ready], None]
SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def supervise(
    serve: Serve, opts: Options, ctx: ResumingContext, listeners: list[socket.socket]
) -> int:
    """Fork one worker per listening socket; ready when all are; exit 0 on SIGTERM/SIGINT."""
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    pids: list[int] = []
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until the handlers below are set
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for sock in listeners:
            pid = os.fork()
            if pid == 0:
                _worker(
                    serve,
                    opts,
                    ctx,
                    sock,
                    others=listeners,
                    ready=(ready_r, ready_w),
                    parent=parent,
                )
            pids.append(pid)
        os.close(ready_w)
        for sock in listeners:
            sock.close()  # each worker holds its own
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        _wait_ready(ready_r, pids)
        print("ready", flush=True)
        pid, status = os.wait()  # returns only when a worker died
    except _Stopped:
        return 0
    except (ModelError, OSError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        _stop_all(pids)
        os.close(ready_r)
    pids.remove(pid)
    log.error("worker %d %s: stopped the others", pid, _describe(status))
    return 1


def _worker(
    serve: Serve,
    opts: Options,
    ctx: ResumingContext,
    sock: socket.socket,
    *,
    others: list[socket.socket],
    ready: tuple[int, int],
    parent: int,
) -> NoReturn:
    code = 1
    ready_r, ready_w = ready
    try:
        os.close(ready_r)
        for other in others:
            if other is not sock:
                other.close()
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)  # the model sets its own when it serves
        _die_with(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

        def say_ready() -> None:
            os.write(ready_w, b".")
            os.close(ready_w)

        serve(opts, ctx, sock, say_ready)
        code = 0
    except BaseException as exc:  # a worker must never run on into the supervisor's code
        log.error("worker %d failed: %s", os.getpid(), exc)
    finally:
        sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("worker %d: prctl(PR_SET_PDEATHSIG) failed", os.getpid())
    if os.getppid() != parent:  # the supervisor is already gone
        os._exit(0)


def _wait_ready(ready_r: int, pids: list[int]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    count = 0
    while count < len(pids):
        if select.select([ready_r], [], [], 0.1)[0]:
            count += len(os.read(ready_r, 64))
            continue
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            pids.remove(pid)
            raise ModelError(f"worker {pid} {_describe(status)} before it was ready")
        if time.monotonic() > deadline:
            raise ModelError(f"workers not ready within {READY_TIMEOUT:.0f} s")


def _stop_all(pids: list[int]) -> None:
    """SIGTERM to our workers (by pid), then SIGKILL to any still there after a while."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid in pids:
            pids.remove(pid)
        elif not pid:
            time.sleep(0.01)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    pids.clear()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
