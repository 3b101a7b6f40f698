"""Stop strings over a stream of text deltas, at a cost bounded by the stop strings' length.

Text is released as soon as it can no longer be the beginning of a stop string; the
longest suffix that could still grow into one is held back. A stop string is never
released, even when the tokens split it in pieces.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add a delta; return the text that is safe to emit now."""
        if not self.stops:
            return delta
        buf = self._pending + delta
        # Only the pending tail plus the new delta can hold a new match, and the pending
        # tail is shorter than the longest stop string: the search stays bounded.
        first = -1
        for stop in self.stops:
            at = buf.find(stop)
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            self._pending = ""
            self.stopped = True
            return buf[:first]
        keep = self._held_suffix(buf)
        self._pending = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The held-back text, once the stream ended without completing a stop string."""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
