"""The training progress bar on stderr (a live bar on a terminal, one line per epoch in logs)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


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
