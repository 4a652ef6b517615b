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

import numpy as np

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


_SMALL = 8  # below this many ids, Python ints beat numpy's per-call overhead
_DASH_COLUMNS = np.array([8, 13, 18, 23])
_DIGIT_COLUMNS = np.array([c for c in range(36) if c not in (8, 13, 18, 23)])


def _fmt(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_batch(n: int) -> list[str]:
    """``n`` new UUIDv7 strings, strictly increasing (in string order too)."""
    return uuid7_block(n)[0]


def uuid7_block(n: int) -> tuple[list[str], bytes]:
    """``n`` new UUIDv7 strings, strictly increasing (in string order too), and their ASCII text
    one after the other (36 bytes each): the archive keeps that one buffer instead of the strings.

    The k-th id of a call takes counter value ``c = counter + 1 + k``: millisecond
    ``last_ms + c // 4096`` and counter ``c % 4096`` (the overflow rule above, without a loop).
    """
    global _last_ms, _counter
    if n <= 0:
        return [], b""
    rand = os.urandom(8 * n)
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, -1
        base_ms, first = _last_ms, _counter + 1
        last = first + n - 1
        _last_ms, _counter = base_ms + last // (_COUNTER_MAX + 1), last % (_COUNTER_MAX + 1)
    if n < _SMALL:
        out = []
        for k in range(n):
            c = first + k
            tail = int.from_bytes(rand[8 * k : 8 * k + 8], "big") & 0x3FFF_FFFF_FFFF_FFFF
            ms_k, ctr = base_ms + c // (_COUNTER_MAX + 1), c % (_COUNTER_MAX + 1)
            out.append(_fmt((ms_k << 80) | (0x7 << 76) | (ctr << 64) | (0b10 << 62) | tail))
        return out, "".join(out).encode("ascii")
    words = np.empty((n, 2), dtype=">u8")
    if last <= _COUNTER_MAX:  # one millisecond: the first word just counts up
        start = (base_ms << 16) | (0x7 << 12) | first
        words[:, 0] = np.arange(start, start + n, dtype=np.uint64)
    else:
        total = first + np.arange(n, dtype=np.uint64)
        words[:, 0] = (
            ((np.uint64(base_ms) + total // np.uint64(_COUNTER_MAX + 1)) << np.uint64(16))
            | np.uint64(0x7 << 12)
            | (total % np.uint64(_COUNTER_MAX + 1))
        )
    words[:, 1] = (np.frombuffer(rand, dtype=">u8") & np.uint64(0x3FFF_FFFF_FFFF_FFFF)) | np.uint64(
        0b10 << 62
    )
    # bytes.hex writes the 32 digits of every id in one C call; NumPy places them between dashes
    digits = np.frombuffer(words.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    # a space after each id: one C-level split makes the strings (slicing each cost ~3x more)
    chars = np.empty((n, 37), dtype=np.uint8)
    chars[:, _DASH_COLUMNS] = 45  # "-"
    chars[:, _DIGIT_COLUMNS] = digits
    chars[:, 36] = 32  # " "
    return chars.tobytes().decode("ascii").split(), chars[:, :36].tobytes()


def uuid7() -> str:
    """One new UUIDv7 string."""
    return uuid7_batch(1)[0]
