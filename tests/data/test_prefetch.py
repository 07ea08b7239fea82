"""prefetch: same items in order, work overlapped with the consumer, errors raised at the right item, early exit
stops the producer, bounded read-ahead."""

from __future__ import annotations

import threading
import time

import pytest

from vitreous.data.prefetch import prefetch


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_items_in_order(depth: int) -> None:
    assert list(prefetch(range(20), depth)) == list(range(20))
    assert list(prefetch([], depth)) == []


def test_producer_runs_while_the_consumer_works() -> None:
    """8 items that each take 50 ms to produce and 50 ms to consume: ~0.45 s overlapped instead of 0.8 s."""

    def slow(n: int):
        for i in range(n):
            time.sleep(0.05)
            yield i

    def consume(items) -> float:
        start = time.perf_counter()
        for _ in items:
            time.sleep(0.05)
        return time.perf_counter() - start

    serial, overlapped = consume(slow(8)), consume(prefetch(slow(8), depth=2))
    assert serial > 0.75
    assert overlapped < 0.65


def test_error_is_raised_at_its_item() -> None:
    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]


def test_early_exit_stops_the_producer() -> None:
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in prefetch(counting(), depth=2):
        if item == 3:
            break
    time.sleep(0.3)  # longer than the producer's polling interval
    assert len(produced) <= 3 + 1 + 2 + 1  # consumed, being consumed, queued, being produced
    assert not [t for t in threading.enumerate() if t.name == "vitreous-prefetch"]


def test_read_ahead_is_bounded() -> None:
    produced = []

    def counting():
        for i in range(100):
            produced.append(i)
            yield i

    items = prefetch(counting(), depth=3)
    assert next(items) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 3 + 1  # consumed, queued, blocked in put
    items.close()


def test_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(range(3), -1))
