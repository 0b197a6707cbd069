"""The process-wide memory budget: bytes held by requests, as request bodies and as decoded images.

Bodies reserve before they are read and are refused when the budget is full, so a flood of uploads is shed
instead of buffered. Decoded images are charged unconditionally: the decode pool already bounds how many
decode at once, and refusing a body whose decode is under way would only waste the work. While they are
held, they leave less room for new bodies. Hence (docs/reliability.md, Memory):

    bytes in flight <= budget + decode threads x max image pixels x DECODE_BYTES_PER_PIXEL
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class MemoryBudget:
    """A counter of bytes in flight against a limit; safe to use from the event loop and the decode threads."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight_bytes(self) -> int:
        return self._in_flight

    def try_reserve(self, size: int) -> bool:
        """Reserve `size` bytes if they fit within the limit; False (and nothing reserved) if they do not."""
        with self._lock:
            if self._in_flight + size > self.limit_bytes:
                return False
            self._in_flight += size
            return True

    def charge(self, size: int) -> None:
        """Count `size` bytes whether or not they fit: memory already committed to, bounded elsewhere."""
        with self._lock:
            self._in_flight += size

    def release(self, size: int) -> None:
        with self._lock:
            self._in_flight -= size

    @contextmanager
    def charged(self, size: int) -> Iterator[None]:
        self.charge(size)
        try:
            yield
        finally:
            self.release(size)


class Reservation:
    """What one request holds in the budget; everything is given back by `release_all`, on every path."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held_bytes = 0

    def try_add(self, size: int) -> bool:
        if not self._budget.try_reserve(size):
            return False
        self.held_bytes += size
        return True

    def release_all(self) -> None:
        self._budget.release(self.held_bytes)
        self.held_bytes = 0
