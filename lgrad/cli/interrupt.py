"""Ctrl-C and SIGTERM for long commands: stop within a few seconds, exit 130.

Python runs a signal handler only between bytecodes of the main thread, so while a
long compiled XLA chunk runs, ``KeyboardInterrupt`` waits for the chunk to end. The
:class:`Interrupts` guard therefore

* turns SIGINT and SIGTERM into ``KeyboardInterrupt`` in the main thread (the
  command unwinds, removes its temporary output and prints what finished), and
* watches the signal from a helper thread (``signal.set_wakeup_fd``): if the main
  thread has not reacted within ``grace`` seconds (or at a second signal), it removes
  the runs' temporary folders, calls ``on_force`` (which prints what finished) and
  ends the process with status 130. Folders being swapped into place are never cut
  in half (the helper waits for :data:`lgrad.engine.runner.SWAP_LOCK`).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["Interrupts", "EXIT_INTERRUPTED"]

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """``with Interrupts(on_force=...):`` around a command's work (main thread only)."""

    def __init__(self, on_force: Callable[[], None] | None = None, *, grace: float = 3.0, unwind: float = 5.0):
        self.on_force = on_force
        self.grace = grace  # seconds the main thread gets to start reacting
        self.unwind = unwind  # seconds it then gets to finish unwinding
        self.received = 0
        self.reacted_at: float | None = None
        self._done = threading.Event()
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._active = False

    # ---------------------------------------------------------------- main thread
    def _handler(self, signum: int, frame: object) -> None:
        self.received += 1
        if self.reacted_at is None:
            self.reacted_at = time.monotonic()
            raise KeyboardInterrupt

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old = {s: signal.signal(s, self._handler) for s in SIGNALS}
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._active = True
        threading.Thread(target=self._watch, name="lgrad-interrupt-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        self._done.set()
        signal.set_wakeup_fd(self._old_fd)
        for s, h in self._old.items():
            signal.signal(s, h)
        r, w = self._pipe
        os.close(w)  # wakes the watchdog, which closes r
        self._active = False

    # ---------------------------------------------------------------- watchdog thread
    def _watch(self) -> None:
        r = self._pipe[0]
        signals_seen = 0
        first_at = None
        try:
            while not self._done.is_set():
                try:
                    data = os.read(r, 64)
                except OSError:
                    return
                if not data or self._done.is_set():
                    return
                signals_seen += len(data)
                first_at = first_at or time.monotonic()
                if signals_seen > 1:
                    self._force()
                while not self._done.wait(0.1):
                    now = time.monotonic()
                    if self.reacted_at is None and now - first_at > self.grace:
                        self._force()
                    if self.reacted_at is not None and now - self.reacted_at > self.unwind:
                        self._force()
                    if _readable(r):
                        break  # another signal: handled at the top of the loop
        finally:
            try:
                os.close(r)
            except OSError:
                pass

    def _force(self) -> None:
        from lgrad.engine import runner

        runner.SWAP_LOCK.acquire()  # a folder being swapped into place finishes first
        for tmp in list(runner.ACTIVE_TEMP_DIRS):
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            if self.on_force is not None:
                self.on_force()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(EXIT_INTERRUPTED)


def _readable(fd: int) -> bool:
    import select

    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False
