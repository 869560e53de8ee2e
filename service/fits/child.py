"""The refit child: one process per server process that makes its fits.

A fit is seconds of Python-level numerics; in a thread of the server it would hold the GIL
against the event loop (a recommendation p99 of 440 ms during a 100k-run refit). The child is
started on first use (spawn), opens the same database by URL, and takes jobs over a pipe:
it answers ("claimed",) once it holds the study's fit lock and ("outcome", outcome) at the
end. The parent kills it when a fit runs past the maximum duration (`FitTimedOut`), and a
killed or crashed child (`ChildDied`) is replaced at the next job. The child exits within a
second of its parent, and with it goes its database connection, hence its fit lock
(PostgreSQL releases the advisory lock at once; a SQLite lease stops being renewed).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from service.fits.compute import Attempt, FitJob, fit_current
from store.db import Engine, engine_url, make_engine


class ChildDied(Exception):
    """The fitting process ended before answering (killed, out of memory, crashed)."""


class FitTimedOut(Exception):
    """The fit ran past the maximum duration; its process was killed."""


class ChildStopped(Exception):
    """The server is shutting down: no fitting process will be started again."""


class ChildError(Exception):
    """The fitting process raised (a database failure, not the data's): its message."""


_child_engines: dict[str, Engine] = {}


def _engine_for(url: str) -> Engine:
    engine = _child_engines.get(url)
    if engine is None:
        while len(_child_engines) >= 4:  # one server's databases; tests make many
            _child_engines.pop(next(iter(_child_engines))).dispose()
        engine = _child_engines[url] = make_engine(url, pool_size=2)
    return engine


def _exit_with_parent(parent: int) -> None:
    """Exit within a second of the server process that started this one."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="hpscale-parent-watch", daemon=True).start()


def _child_main(pipe: Pipe, parent: int) -> None:  # pragma: no cover - runs in the child process
    _exit_with_parent(parent)
    while True:
        try:
            url, job = pipe.recv()
        except EOFError:
            return
        try:
            attempt = fit_current(_engine_for(url), job, on_claimed=lambda: pipe.send(("claimed",)))
            pipe.send(("outcome", attempt))
        except BaseException as error:  # noqa: BLE001 - report it; the parent decides
            pipe.send(("error", f"{type(error).__name__}: {error}"))


class FitChild:
    """This server process's fitting child: started on first use, replaced when it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one job at a time through the pipe
        self._process: Any = None
        self._pipe: Pipe | None = None
        self._stopped = False

    def _start(self) -> tuple[Any, Pipe]:
        if self._process is None or not self._process.is_alive():
            context = multiprocessing.get_context("spawn")
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_child_main, args=(child_end, os.getpid()), name="hpscale-fit", daemon=True
            )
            process.start()
            child_end.close()
            self._process, self._pipe = process, parent_end
        assert self._pipe is not None
        return self._process, self._pipe

    def warm(self) -> None:
        """Start the child now (a server's start-up), so the first fit does not wait for it."""
        with self._lock:
            self._start()

    def pid(self) -> int | None:
        process = self._process
        return None if process is None or not process.is_alive() else int(process.pid)

    def run(self, engine: Engine, job: FitJob, max_seconds: float) -> Attempt:
        """Make `job` in the child; its outcome. Raises FitTimedOut (the child was killed past
        `max_seconds` from its claim), ChildDied, ChildStopped (shutting down) or ChildError."""
        with self._lock:
            # `stop()` ends the job in progress (ChildStopped), not every later one: a process
            # that runs several apps (tests, an embedding) fits again with a new child.
            self._stopped = False
            process, pipe = self._start()
            try:
                pipe.send((engine_url(engine), job))
            except (BrokenPipeError, OSError):
                self._discard()
                raise ChildDied("the fitting process was gone") from None
            claimed_at: float | None = None
            while True:
                budget = 1.0 if claimed_at is None else max(0.0, claimed_at + max_seconds - time.monotonic())
                try:
                    ready = pipe.poll(min(budget, 1.0))
                    message = pipe.recv() if ready else None
                except (EOFError, OSError):
                    self._discard()
                    if self._stopped:
                        raise ChildStopped("the server is shutting down") from None
                    raise ChildDied(f"the fitting process ended (exit code {process.exitcode})") from None
                if message is None:
                    if not process.is_alive():
                        self._discard()
                        if self._stopped:
                            raise ChildStopped("the server is shutting down")
                        raise ChildDied(f"the fitting process ended (exit code {process.exitcode})")
                    if claimed_at is not None and time.monotonic() >= claimed_at + max_seconds:
                        self._kill()
                        raise FitTimedOut(f"the fit took longer than {max_seconds:g} s")
                    continue
                if message[0] == "claimed":
                    claimed_at = time.monotonic()
                elif message[0] == "outcome":
                    attempt: Attempt = message[1]
                    return attempt
                else:
                    raise ChildError(str(message[1]))

    def _discard(self) -> None:
        process, self._process, self._pipe = self._process, None, None
        if process is not None:
            process.join(timeout=5)

    def _kill(self) -> None:
        process = self._process
        if process is not None:
            process.kill()
        self._discard()

    def stop(self) -> None:
        """Kill the child now (server shutdown): a running fit is not waited for; its lock goes
        with its process and whichever process asks next fits again."""
        self._stopped = True
        process, pipe = self._process, self._pipe
        if process is not None:
            process.kill()
            process.join(timeout=5)
        if pipe is not None:
            pipe.close()
        self._process, self._pipe = None, None
