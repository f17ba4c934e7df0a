"""The writer's queue: control messages first, microphone audio in real time.

One :class:`Outbox` per conversation sits between every sender and the single writer
thread. It keeps two queues:

* **control** (pongs, tool results, user and contextual messages, feedback, activity,
  the close frame): FIFO, bounded in count and bytes. A user's send waits for room up
  to its timeout (back-pressure); a library thread's send (a pong from the reader, a
  tool result) never waits.
* **microphone**: real-time audio. Chunks are split into pieces of at most
  :data:`MIC_PIECE_S` so a control message never waits behind a long audio message on
  a slow link. A piece older than ``max_lag`` seconds when its turn comes is dropped
  (oldest first): the audio the server gets is never further behind than that. While
  the kernel still holds unsent bytes (``unsent()``, Linux ``SIOCOUTQNSD``) beyond
  :data:`UNSENT_LIMIT`, no audio is handed to the socket, so the kernel's buffer cannot
  hide a backlog: the backlog stays here, where it is dropped by age.

:meth:`Outbox.get` is what the writer blocks on; it returns control items before
audio. Everything here is guarded by one condition variable; nothing blocks on I/O.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MIC_PIECE_S", "UNSENT_LIMIT", "MicDrops", "MicPiece", "Outbox"]

#: Longest microphone message, in seconds of audio (a pong waits at most this long
#: behind audio already handed to the socket).
MIC_PIECE_S = 0.1
#: Unsent bytes the kernel may hold before more microphone audio is held back.
UNSENT_LIMIT = 2048
#: On a link slower than the microphone, pieces are cut to cross it in this long.
SLOW_LINK_PIECE_S = 0.15
MIN_PIECE_BYTES = 160
#: While audio waits for the kernel to drain, re-check this often (a deadline wait on
#: the condition, woken early by any new control message).
UNSENT_RECHECK_S = 0.01
#: Control queue bounds (a sender beyond them waits; a library thread's item is dropped).
CONTROL_MAX_ITEMS = 1024
CONTROL_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class MicPiece:
    """A piece of encoded microphone audio and when its first sample was captured."""

    data: bytes
    captured_at: float


@dataclass
class MicDrops:
    """Microphone audio dropped since the last report."""

    chunks: int = 0
    seconds: float = 0.0


class _Stop:
    """Returned by :meth:`Outbox.get` once the outbox is closed and drained."""


STOP = _Stop()


class Outbox:
    """Control-first, real-time-audio queue for one writer thread (see module docstring)."""

    def __init__(self, *, max_lag: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._control: deque[object] = deque()
        self._control_bytes = 0
        self._mic: deque[MicPiece] = deque()
        self._mic_bytes = 0
        self._closed = False
        self._clock = clock
        self.max_lag = max_lag
        #: Bytes per second of the encoded microphone audio (set once the format is known).
        self.bytes_per_second = 32000
        #: ``unsent() -> int | None``: bytes the kernel has not sent yet (None: unknown).
        self.unsent: Callable[[], int | None] = lambda: None
        #: ``in_flight() -> int | None``: bytes not yet acknowledged by the peer (sent or
        #: not; Linux ``SIOCOUTQ``), for the link-rate estimate.
        self.in_flight: Callable[[], int | None] = lambda: None
        self._written = 0
        self._rate = _LinkRate()
        #: When the writer started the send in progress (None: not sending).
        self.send_started: float | None = None
        self.drops = MicDrops()
        self.total_dropped_chunks = 0
        self.total_dropped_seconds = 0.0

    # -- producers ------------------------------------------------------------------

    def put_control(self, item: object, *, timeout: float | None = 0.0) -> bool:
        """Queue a control item; ``False`` if there was no room within ``timeout``
        (``0``: do not wait, ``None``: wait as long as it takes) or the outbox is closed."""
        size = _size_of(item)
        with self._cond:
            if timeout != 0.0:
                deadline = None if timeout is None else self._clock() + timeout
                while not self._closed and self._full(size):
                    remaining = None if deadline is None else deadline - self._clock()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(remaining)
            if self._closed or self._full(size):
                return False
            self._control.append(item)
            self._control_bytes += size
            self._cond.notify_all()
            return True

    def _full(self, size: int) -> bool:
        return bool(self._control) and (
            len(self._control) >= CONTROL_MAX_ITEMS
            or self._control_bytes + size > CONTROL_MAX_BYTES
        )

    def put_mic(self, data: bytes, captured_at: float) -> None:
        """Queue encoded microphone audio (never blocks; split into short pieces)."""
        if not data:
            return
        bps = self.bytes_per_second
        piece = max(2, int(bps * MIC_PIECE_S) & ~1)
        with self._cond:
            if self._closed:
                return
            for start in range(0, len(data), piece):
                chunk = data[start : start + piece]
                self._mic.append(MicPiece(chunk, captured_at + start / bps))
                self._mic_bytes += len(chunk)
            # Bytes bound: never more than max_lag (+1 piece) of audio is held.
            limit = int(bps * self.max_lag) + piece
            while self._mic_bytes > limit:
                self._drop_oldest()
            self._cond.notify_all()

    def close(self, final: object | None = None) -> None:
        """No more items are accepted; queued audio is dropped. ``final`` (e.g. the
        close frame) is sent after the queued control items."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._mic.clear()
            self._mic_bytes = 0
            if final is not None:
                self._control.append(final)
            self._cond.notify_all()

    def discard_control(self) -> int:
        """Drop the queued control items (the writer gave up); returns how many."""
        with self._cond:
            n = len(self._control)
            self._control.clear()
            self._control_bytes = 0
            self._cond.notify_all()
            return n

    # -- the writer -------------------------------------------------------------------

    def get(self) -> object:
        """The next item for the writer: a control item, a :class:`MicPiece`, or
        :data:`STOP` once closed and drained. Blocks until there is one."""
        with self._cond:
            while True:
                if self._control:
                    item = self._control.popleft()
                    self._control_bytes -= _size_of(item)
                    self._cond.notify_all()  # room for a waiting sender
                    return item
                if self._closed:
                    return STOP
                if self._mic:
                    now = self._clock()
                    # On a slow link a piece still has the kernel's queue and itself to
                    # cross: count that time against max_lag too, not only its age.
                    in_flight = self.in_flight()
                    rate = self._rate.update(now, self._written, in_flight)
                    while self._mic:
                        transit = self._transit(self._mic[0], in_flight, rate)
                        if now - self._mic[0].captured_at + transit <= self.max_lag:
                            break
                        self._drop_oldest()
                    if self._mic:
                        unsent = self.unsent()
                        if unsent is None or unsent <= UNSENT_LIMIT:
                            return self._take_piece(rate)
                        self._cond.wait(UNSENT_RECHECK_S)
                        continue
                self._cond.wait()

    def note_sent(self, nbytes: int) -> None:
        """The writer handed ``nbytes`` to the socket (for the link-rate estimate)."""
        self._written += nbytes

    def _transit(self, piece: MicPiece, in_flight: int | None, rate: float | None) -> float:
        if rate is None or in_flight is None:
            return 0.0
        return (in_flight + _wire_size(len(piece.data))) / rate

    def _take_piece(self, rate: float | None) -> MicPiece:
        piece = self._mic.popleft()
        if rate is not None:
            # Pieces short enough to cross the link in SLOW_LINK_PIECE_S, so a pong
            # never waits long behind one.
            limit = max(MIN_PIECE_BYTES, int(rate * SLOW_LINK_PIECE_S * 3 / 4) & ~1)
            if len(piece.data) > limit:
                rest = MicPiece(
                    piece.data[limit:], piece.captured_at + limit / self.bytes_per_second
                )
                self._mic.appendleft(rest)
                piece = MicPiece(piece.data[:limit], piece.captured_at)
        self._mic_bytes -= len(piece.data)
        return piece

    def take_drops(self) -> MicDrops | None:
        """Drops since the last call (``None`` if none)."""
        with self._cond:
            drops = self.drops
            if not drops.chunks:
                return None
            self.drops = MicDrops()
            return drops

    def _drop_oldest(self) -> None:
        piece = self._mic.popleft()
        self._mic_bytes -= len(piece.data)
        seconds = len(piece.data) / self.bytes_per_second
        self.drops.chunks += 1
        self.drops.seconds += seconds
        self.total_dropped_chunks += 1
        self.total_dropped_seconds += seconds


class _LinkRate:
    """Bytes per second the peer acknowledges while the link is busy (a queue in the
    kernel): the link's real rate, measured, not assumed. ``None`` until measured, and
    while the link keeps up (nothing queued)."""

    WINDOW_S = 0.25

    def __init__(self) -> None:
        self.rate: float | None = None
        self._start: tuple[float, int] | None = None

    def update(self, now: float, written: int, in_flight: int | None) -> float | None:
        if in_flight is None:
            return None
        if in_flight <= UNSENT_LIMIT:  # the link keeps up: nothing to measure, no delay
            self._start = None
            self.rate = None
            return None
        acked = written - in_flight
        if self._start is None:
            self._start = (now, acked)
        elif now - self._start[0] >= self.WINDOW_S:
            t0, acked0 = self._start
            measured = max(1.0, (acked - acked0) / (now - t0))
            self.rate = measured if self.rate is None else 0.6 * self.rate + 0.4 * measured
            self._start = (now, acked)
        return self.rate


def _wire_size(raw: int) -> int:
    """Bytes on the wire of a ``user_audio_chunk`` of ``raw`` audio bytes (base64, JSON)."""
    return raw * 4 // 3 + 40


def _size_of(item: object) -> int:
    return len(item) if isinstance(item, (str, bytes)) else 64
