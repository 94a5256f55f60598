"""Progress bars on stderr: the trainer's (``Progress``) and the searches' (``progress_bar``).

``Progress``: ``ondevice train``'s bar, a live bar on a terminal, one line per epoch in logs.

``progress_bar`` / ``tick`` (issue 13, point 4): ``with progress_bar("auto uniform"):`` around a
search makes every ``tick(epoch, epochs, step)`` the shared training loop calls
(``train.loop.fit``) redraw one stderr line in place::

    auto uniform  [#######.............]  epoch 3/8  step 1,200  12.4 s  (41 s left)

(the time left is the innermost ``train.loop.deadline``'s, when one is set). It draws only
when the stream is a TTY (``enabled=None``) and at most every ``min_interval_s``; on a pipe or
a file nothing is written, so logs keep one line per candidate start/finish. The line is
erased when the block ends, before the caller prints its finish line. ``tick`` without an
open bar costs one list check.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress", "ProgressBar", "progress_bar", "tick"]


class Progress:
    """A one-line progress bar on stderr: epoch, batches, samples/s, running loss."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr is not None
        # the moving bar only on a terminal; logs get one line per epoch
        self.live = self.enabled and sys.stderr.isatty()
        self._last = 0.0

    def due(self) -> bool:
        """Whether an ``update`` now would print (enabled and 0.5 s since the last one)."""
        return self.enabled and time.monotonic() - self._last >= 0.5

    def update(self, epoch: int, epochs: int, step: int, steps: int, samples_per_s: float, loss: float, *, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        width = 24
        filled = int(width * step / max(steps, 1))
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(
            f"\repoch {epoch}/{epochs} [{bar}] {step}/{steps} batches  {samples_per_s / 1000:7.1f}K samples/s  loss {loss:.4f}"
        )
        sys.stderr.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r" + text.ljust(100) if self.live else text) + "\n")
            sys.stderr.flush()


WIDTH = 20


class ProgressBar:
    """One in-place line on ``stream`` (see the module docstring)."""

    def __init__(self, label: str, stream: TextIO, *, min_interval_s: float = 0.2,
                 time_left: Callable[[], float | None] | None = None) -> None:
        self.label, self.stream, self.min_interval_s = label, stream, min_interval_s
        self.time_left = time_left
        self.started = time.monotonic()
        self._last = -float("inf")
        self._drawn = False

    def update(self, epoch: int, epochs: int, step: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        done = min(1.0, max(0.0, (epoch - 1) / epochs)) if epochs > 0 else 0.0
        bar = "#" * int(round(done * WIDTH))
        left = self.time_left() if self.time_left is not None else None
        text = (f"{self.label}  [{bar:.<{WIDTH}}]  epoch {epoch}/{epochs}  step {step:,}  {now - self.started:.1f} s"
                + (f"  ({max(left, 0.0):.0f} s left)" if left is not None else ""))
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


_BARS: list[ProgressBar] = []


@contextmanager
def progress_bar(label: str, *, stream: TextIO | None = None, enabled: bool | None = None,
                 min_interval_s: float = 0.2, time_left: Callable[[], float | None] | None = None) -> Iterator[None]:
    """Draw :func:`tick` calls inside the block as one line on ``stream`` (default stderr).

    ``enabled``: ``None`` draws only on a TTY; ``False`` never (``--quiet``); ``True`` always.
    """
    out = stream if stream is not None else sys.stderr
    on = enabled if enabled is not None else bool(getattr(out, "isatty", lambda: False)())
    if not on:
        yield
        return
    bar = ProgressBar(label, out, min_interval_s=min_interval_s, time_left=time_left)
    _BARS.append(bar)
    try:
        yield
    finally:
        _BARS.remove(bar)
        bar.close()


def tick(epoch: int, epochs: int, step: int) -> None:
    """Report a training step to the innermost open bar (nothing when none is open)."""
    if _BARS:
        _BARS[-1].update(epoch, epochs, step)
