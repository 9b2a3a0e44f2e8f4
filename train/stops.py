"""SIGTERM (pre-emption, ``wandb agent``, hyperband) and Ctrl-C: one place that turns signals into a clean stop.

While :func:`stops_raise` is active, SIGINT and SIGTERM raise :class:`Stopped` in the main thread; the entry points
catch it, finish what must be finished (the W&B run, the lock) inside :func:`stops_ignored`, print one ``stopped:``
line and exit with :func:`exit_status`. :func:`stops_deferred` holds a stop until a block that must not be cut in
half (an epoch's log row and its checkpoint) is done.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STOP_SIGNALS", "Stopped", "exit_status", "stops_deferred", "stops_ignored", "stops_raise"]

# A stop that lands inside a W&B call can leave the coroutine W&B made for that call never run; when the stopped
# call's frames are freed (with the stop's exception), Python warns "coroutine 'AsyncioManager._wrap' was never awaited"
# and "Enable tracemalloc ..." after the one `stopped:` line (seen in CI: explain/run.py, Ctrl-C, about 1 stop in 4).
# The call was abandoned on purpose; only that coroutine's warning is silenced.
warnings.filterwarnings("ignore", message=r"coroutine 'AsyncioManager\._wrap' was never awaited",
                        category=RuntimeWarning)

# SIGHUP (the terminal went away) too where there is one; a signal the process inherited as ignored (nohup, `cmd &`)
# stays ignored.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Stopped(BaseException):
    """A stop was requested; ``signal_name`` is ``SIGINT`` or ``SIGTERM`` and the message says what was kept.

    A ``BaseException``, like ``KeyboardInterrupt``: library code that catches ``Exception`` (a progress bar's
    writer, a logging call) must not swallow a stop.
    """

    def __init__(self, signal_name: str, message: str = ""):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def wandb_exit_code(self) -> int:
        """The exit code a process killed by the signal would have (128 + signal number), as W&B records it."""
        return 128 + signal.Signals[self.signal_name].value

    def explained(self, message: str) -> Stopped:
        """The same stop with the message the user will read."""
        return Stopped(self.signal_name, message)


def exit_status(stop: Stopped) -> int:
    """130 for Ctrl-C (the shell's convention), 0 for SIGTERM and SIGHUP (a requested, clean end, as pre-emption
    expects)."""
    return 130 if stop.signal_name == "SIGINT" else 0


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _handlers(handler) -> Iterator[None]:
    if not _in_main_thread():  # signal handlers can only be set in the main thread (in-process callers, tests)
        yield
        return
    ignored = {sig for sig in STOP_SIGNALS if signal.getsignal(sig) is signal.SIG_IGN}
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if sig not in ignored}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _ignore_stops() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextmanager
def stops_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` inside the block (main thread only).

    Once one has, further ones are ignored, during the block and after it: a second Ctrl-C must not cut the stop's
    clean-up short, nor kill the process while it exits (CPython restores the default action, death, for signals
    that had a Python handler when it shuts down; an ignored signal stays ignored).
    """
    raised = ended = False

    def handler(signum: int, frame: object) -> None:
        nonlocal raised
        if ended:  # the block is over and its handlers are being put back: nothing in it can be stopped any more,
            return  # and a Stopped raised here would escape the caller's try as a traceback (a real race, seen in CI)
        raised = True
        _ignore_stops()
        raise Stopped(signal.Signals(signum).name)

    try:
        with _handlers(handler):
            try:
                yield
            finally:
                ended = True
    finally:
        if raised and _in_main_thread():
            _ignore_stops()


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them (main thread only); blocks nest.

    ``torch.save``'s zip writer turns an exception raised inside it by a signal handler into a RuntimeError, and an
    epoch's row must not reach W&B without its checkpoint: both happen inside such a block.
    """
    pending: list[int] = []
    with _handlers(lambda signum, frame: pending.append(signum)):
        yield
    for sig in dict.fromkeys(pending):
        signal.raise_signal(sig)


@contextmanager
def stops_ignored() -> Iterator[None]:
    """Drop SIGINT/SIGTERM inside the block: a second Ctrl-C while a stop cleans up must not break the clean stop."""
    with _handlers(signal.SIG_IGN):
        yield
