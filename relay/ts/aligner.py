"""PacketAligner: cuts one upstream's byte stream into whole 188-byte TS packets, without copying.

``feed(data) -> list[memoryview]`` returns whole packets as views sliced from ``data`` (only the <=187-byte
carry-over of the previous call is copied). Sync is 0x47 at a 188-byte stride over ``sync_packets``
packets; after garbage it resyncs and never emits a partial packet. ``synced`` and ``garbage_bytes``
(bytes discarded) let the caller fail an upstream that never syncs (an HTML page sent with HTTP 200).
``feed_region`` is the same for a caller that keeps its unconsumed bytes in place (relay/core/buffers.py).
"""

from __future__ import annotations

from relay.ts.packet import SYNC, TS_PACKET_SIZE, byte_view

_PKT = TS_PACKET_SIZE


class PacketAligner:
    """Cuts one upstream's byte stream into whole TS packets; one instance per upstream connection.

    Zero-copy when synced: the output views are slices of the input, checked with one strided slice per
    call (every 188th byte must be 0x47). A packet whose successor's sync byte is wrong is dropped with
    the garbage (it was probably cut short). A packet that ends a call is emitted when its own sync byte
    is right; its successor is checked on the next call.
    """

    def __init__(self, sync_packets: int = 5) -> None:
        if sync_packets < 2:
            raise ValueError("sync_packets must be >= 2")
        self.sync_packets = sync_packets
        self.synced = False
        self.garbage_bytes = 0
        self._carry = b""  # synced: a packet's first <188 bytes; unsynced: bytes still to search
        self._data: bytes | bytearray | None = None  # the caller's buffer during feed

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Return the whole packets completed by ``data``, as few views as possible."""
        view: memoryview | None = byte_view(data)
        # every view worked on below is a suffix of ``data``: its sync bytes can be sliced from ``data``
        # itself, ~7x cheaper than a strided memoryview slice
        self._data = data if isinstance(data, bytes | bytearray) else None
        out: list[memoryview] = []
        while view is not None:
            if not self.synced:
                view = self._search(view)
                if view is None:
                    break
            view = self._aligned(view, out)
        self._data = None
        return out

    def feed_region(self, buf: bytearray, start: int, end: int) -> tuple[list[memoryview], int, bool]:
        """Like ``feed(buf[start:end])`` for a caller that keeps its unconsumed bytes in place.

        Returns the whole packets, how far the input was consumed (the caller presents
        ``buf[consumed:end]`` again, followed by what it reads next, so a packet cut by a read stays in
        one piece and nothing is copied), and whether the packets are exactly ``buf[start:consumed]``
        (then a splice may rewrite them there). Garbage and resync fall back to ``feed``.
        """
        if self.synced and not self._carry:
            syncs = bytes(buf[start:end:_PKT])  # every packet start in the range, the partial one too
            if not syncs.strip(SYNC):
                whole = start + (end - start) // _PKT * _PKT
                return ([memoryview(buf)[start:whole]] if whole > start else []), whole, whole > start
        views = self.feed(memoryview(buf)[start:end])
        consumed = end
        carry = self._carry
        if self.synced and carry and len(carry) <= end - start and buf[end - len(carry) : end] == carry:
            self._carry = b""  # back to in-place: the partial packet stays in the caller's buffer
            consumed = end - len(carry)
        in_place = len(views) == 1 and views[0].obj is buf and len(views[0]) == consumed - start
        return views, consumed, in_place

    def _syncs(self, view: memoryview, stop: int) -> bytes:
        """Every 188th byte of ``view[:stop]``."""
        data = self._data
        if data is None:
            return bytes(view[0:stop:_PKT])
        start = len(data) - len(view)
        return bytes(data[start : start + stop : _PKT])

    def _search(self, view: memoryview) -> memoryview | None:
        """Find sync_packets sync bytes at a 188 stride; return the data from there, or keep a tail.

        The input is scanned through small windows and confirmed with strided slices, so the data
        returned once synced is still a view of the caller's bytes.
        """
        k = self.sync_packets
        span = (k - 1) * _PKT + 1
        want = SYNC * k
        carry = self._carry
        self._carry = b""
        if carry:  # a candidate may start in the tail kept from the previous call
            head = carry + bytes(view[:span])
            i = head.find(SYNC)
            while 0 <= i < len(carry):
                if len(head) - i < span:
                    self.garbage_bytes += i
                    self._carry = head[i:]
                    return None
                if head[i : i + span : _PKT] == want:
                    self.garbage_bytes += i
                    self.synced = True
                    self._carry = carry[i:]
                    return view
                i = head.find(SYNC, i + 1)
            self.garbage_bytes += len(carry)
        size = len(view)
        pos, window = 0, 1024
        while pos < size:
            win = bytes(view[pos : pos + window])
            j = win.find(SYNC)
            while j >= 0:
                i = pos + j
                if size - i < span:
                    self.garbage_bytes += i
                    self._carry = bytes(view[i:])
                    return None
                if bytes(view[i : i + span : _PKT]) == want:
                    self.garbage_bytes += i
                    self.synced = True
                    return view[i:]
                j = win.find(SYNC, j + 1)
            pos += len(win)
            window = min(window * 2, 1 << 16)
        self.garbage_bytes += size
        return None

    def _aligned(self, view: memoryview, out: list[memoryview]) -> memoryview | None:
        """Emit packets of synced data; return the rest to search again if sync is lost, else None."""
        if self._carry:
            carry = self._carry
            need = -len(carry) % _PKT
            if len(view) < need:
                self._carry += bytes(view)
                return None
            self._carry = b""
            head = carry + bytes(view[:need])
            syncs = head[::_PKT] + bytes(view[need : need + 1])
            if syncs != SYNC * len(syncs):
                return self._lost(memoryview(head + bytes(view[need:])), syncs, out)
            out.append(memoryview(head))
            view = view[need:]
        size = len(view)
        whole = size - size % _PKT
        syncs = self._syncs(view, size)
        if not syncs.strip(SYNC):
            if whole:
                out.append(view[:whole])
            if size > whole:
                self._carry = bytes(view[whole:])
            return None
        return self._lost(view, syncs, out)

    def _lost(self, view: memoryview, syncs: bytes, out: list[memoryview]) -> memoryview:
        """Sync byte missing at a packet boundary: emit the packets before the cut one, search the rest."""
        bad = len(syncs) - len(syncs.lstrip(SYNC))  # first packet whose sync byte is wrong
        good = max(bad - 1, 0)  # the packet before it was cut short: not emitted
        if good:
            out.append(view[: good * _PKT])
        self.synced = False
        skip = 1 if bad else 0
        self.garbage_bytes += skip
        return view[good * _PKT + skip :]
