"""Where an upstream's reads land: back to back in one bytearray, handed on in place.

With a plain ``asyncio.Protocol`` every read is a fresh ``bytes`` (one copy by the loop), and the
splice needs a writable copy of it to rewrite headers (a second copy); a TS packet cut by a read is
glued back from two objects (a third, small one). Reading into our own buffer (``BufferedProtocol``)
removes all three: the splice rewrites headers where the bytes landed, and a packet cut by one read
is completed by the next one right behind it.

The bytes handed on stay referenced (by the splice's hold, by clients' write queues) until they are
sent, so a full buffer is never overwritten: it is set aside, and reused only once nothing refers to
it any more; otherwise a new one is made. Its unconsumed tail (the cut packet) moves to the front of
the next buffer. Sizes follow the upstream: a read that fills all the space offered doubles the next
buffer (a fast upstream gets fewer, larger reads, so the per-read work is spread over more bytes), up
to ``max_size``; a buffer whose reads all stayed under an eighth of it is followed by one half its
size (a provider's connect burst grows it, the paced stream after it shrinks it back), so memory
stays proportional to what is in flight.
"""

from __future__ import annotations

MIN_SIZE = 64 * 1024
MAX_SIZE = 1024 * 1024
SPARES = 2


def unreferenced(buf: bytearray) -> bool:
    """Nothing exports ``buf`` (no memoryview of it is alive): it can be written over.

    A bytearray refuses to change size while exported; popping and re-appending one byte tests that
    without reallocating (the allocation keeps its room for the byte).
    """
    if not buf:
        return True
    try:
        last = buf.pop()
    except BufferError:
        return False
    buf.append(last)
    return True


class ReadBuffer:
    """``region()`` to read into, ``filled(n)`` after a read, ``consume(upto)`` once bytes went on.

    ``buf[start:end]`` is what was read and not consumed yet.
    """

    def __init__(self, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError("need 0 < min_size <= max_size")
        self.min_size = min_size
        self.max_size = max_size
        self.buf = bytearray(min_size)
        self.start = 0
        self.end = 0
        self.buffers_made = 1
        self._offered = 0
        self._grow = False
        self._peak = 0  # the largest read into the current buffer
        self._spares: list[bytearray] = []

    def region(self) -> memoryview:
        """The free space after ``end``; a fresh buffer when less than a quarter of it is left."""
        if not self.buf:
            self.buf = bytearray(self.min_size)  # read again after release()
        elif len(self.buf) - self.end < len(self.buf) // 4:
            self._next_buffer()
        self._offered = len(self.buf) - self.end
        return memoryview(self.buf)[self.end :]

    def filled(self, n: int) -> None:
        self.end += n
        self._peak = max(self._peak, n)
        if n >= self._offered and len(self.buf) < self.max_size:
            self._grow = True  # the upstream had more to give than we offered

    def consume(self, upto: int) -> None:
        self.start = upto

    def release(self) -> None:
        """Drop the buffers (the connection is over); the unconsumed tail goes with them."""
        self.buf = bytearray()
        self.start = self.end = 0
        self._spares.clear()

    def _next_buffer(self) -> None:
        old = self.buf
        if self._grow:
            size = min(len(old) * 2, self.max_size)
        elif self._peak * 8 < len(old):
            size = max(len(old) // 2, self.min_size)
        else:
            size = len(old)
        self._grow = False
        self._peak = 0
        tail = old[self.start : self.end]  # the cut packet: < 188 bytes when synced
        new = None
        for i, spare in enumerate(self._spares):
            if len(spare) == size and unreferenced(spare):
                new = self._spares.pop(i)
                break
        if new is None:
            new = bytearray(size)
            self.buffers_made += 1
        new[: len(tail)] = tail
        if len(old) == size:
            self._spares.append(old)
            del self._spares[:-SPARES]
        else:
            self._spares.clear()  # a new size: the old spares will not fit any more
        self.buf, self.start, self.end = new, 0, len(tail)
