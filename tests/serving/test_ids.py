"""Server-assigned impression ids: valid UUIDv7, strictly increasing, unique, from both code paths."""

from __future__ import annotations

import itertools
import time
import uuid

from reloop_service.serving.ids import uuid7, uuid7_batch


def test_ids_are_uuid7_time_ordered_and_strictly_increasing_across_both_paths() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [uuid7(), *uuid7_batch(3), *uuid7_batch(500), *uuid7_batch(7), *uuid7_batch(9), uuid7()]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # string order is issue order
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text  # canonical lower-case 8-4-4-4-12 form
        assert u.version == 7 and u.variant == uuid.RFC_4122
        ms = u.int >> 80
        assert before_ms <= ms <= after_ms + 1  # a counter overflow may advance one millisecond
    ints = [uuid.UUID(t).int for t in ids]
    assert all(a < b for a, b in itertools.pairwise(ints))


def test_a_counter_overflow_within_one_millisecond_moves_to_the_next() -> None:
    ids = uuid7_batch(5000)  # more than the 4096 counter values of one millisecond
    ints = [uuid.UUID(t).int for t in ids]
    assert all(a < b for a, b in itertools.pairwise(ints))
    assert (ints[-1] >> 80) > (ints[0] >> 80)


def test_the_block_text_is_the_ids_one_after_the_other_on_both_paths() -> None:
    """The archive keeps ``uuid7_block``'s text instead of the strings: it must be exactly them."""
    from reloop_service.serving.ids import uuid7_block

    for n in (0, 1, 7, 8, 100):
        ids, text = uuid7_block(n)
        assert len(ids) == n and text == "".join(ids).encode("ascii") and len(text) == 36 * n
