"""Temporary stand-in for relay.mpegts.PacketAligner (replaced when mpegts lands)."""

from __future__ import annotations


class PacketAligner:
    def __init__(self) -> None:
        self.carry = b""
        self.synced = False
        self.garbage_bytes = 0

    def feed(self, data: bytes | memoryview) -> list[memoryview]:
        buf = self.carry + bytes(data) if self.carry else bytes(data)
        self.carry = b""
        if not self.synced:
            for i in range(len(buf)):
                if all(buf[j] == 0x47 for j in range(i, min(len(buf), i + 188 * 3), 188)) and len(buf) - i >= 188 * 3:
                    self.garbage_bytes += i
                    buf = buf[i:]
                    self.synced = True
                    break
            else:
                keep = min(len(buf), 188 * 3)
                self.garbage_bytes += len(buf) - keep
                self.carry = buf[len(buf) - keep :]
                return []
        n = len(buf) - len(buf) % 188
        self.carry = buf[n:]
        return [memoryview(buf)[:n]] if n else []
