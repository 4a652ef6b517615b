"""Impression ids: UUIDv7 (RFC 9562), time-ordered so archive rows sort by serving time.

Layout: 48-bit Unix milliseconds, version 7, a 12-bit counter (``rand_a``, method 1 of RFC 9562
section 6.2) that keeps ids issued in one millisecond increasing, variant 0b10, 62 random bits.
When the counter overflows inside one millisecond the timestamp is advanced by one, so ids of
this process are strictly increasing and stay unique across processes by the random bits.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def _fmt(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_batch(n: int) -> list[str]:
    """``n`` new UUIDv7 strings, strictly increasing (in string order too)."""
    global _last_ms, _counter
    if n <= 0:
        return []
    rand = os.urandom(8 * n)
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, -1
        stamps: list[tuple[int, int]] = []
        for _ in range(n):
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms, _counter = _last_ms + 1, 0
            stamps.append((_last_ms, _counter))
    out = []
    for i, (ms_i, ctr) in enumerate(stamps):
        tail = int.from_bytes(rand[8 * i : 8 * i + 8], "big") & 0x3FFF_FFFF_FFFF_FFFF
        value = (ms_i << 80) | (0x7 << 76) | (ctr << 64) | (0b10 << 62) | tail
        out.append(_fmt(value))
    return out


def uuid7() -> str:
    """One new UUIDv7 string."""
    return uuid7_batch(1)[0]
