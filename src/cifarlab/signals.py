"""Catching SIGINT and SIGTERM for the length of a block: the handlers are installed on entry and the previous
ones put back on exit. Python handles signals in the main thread only, so elsewhere the block catches nothing.
What a caught signal does is the subclass's `_handle` (training/state.py: stop at a step's end;
study/launch.py: pass it on to the workers). No torch here: a worker imports this before it is pinned."""

from __future__ import annotations

import signal
import threading


class SignalCatcher:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
