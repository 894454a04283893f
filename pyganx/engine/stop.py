"""Ctrl-C during training: the first one stops the run after the step it is in (which
is then checkpointed), a second one stops it at once."""
from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequest:
    """Once installed in the main thread: the first SIGINT (Ctrl-C) only sets
    ``requested``, for the loop to stop after the step it is in; a second one puts the
    previous handler back and raises KeyboardInterrupt. ``restore`` puts it back too.
    Nothing is installed off the main thread or where SIGINT is ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                # None: a handler not set from Python, which cannot be put back as it was
                self._previous = signal.default_int_handler if previous is None else previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True

    def restore(self) -> None:
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous)


def worker_leaves_sigint_to_the_trainer(_worker_id: int) -> None:
    """A terminal's Ctrl-C reaches the data-loader workers too; they ignore it, so the
    main process can finish its step, checkpoint and shut them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


__all__ = ["StopRequest", "worker_leaves_sigint_to_the_trainer"]
