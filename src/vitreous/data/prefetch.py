"""Overlap reading with compute: produce the items of an iterable in a background thread, a few ahead.

``for batch in prefetch(batches(...), depth=2): compute(batch)`` reads batch ``k + 1`` (and ``k + 2``) while
batch ``k`` is computed.  One thread suffices because file reads (``readinto``), FFTs and most torch
kernels release the GIL.  Memory: at most ``depth + 2`` items exist at once (``depth`` queued, one being
produced, one being consumed).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``iterable`` in order, produced by a background thread up to ``depth`` items ahead.

    An exception raised while producing an item is raised here, at that item.  Leaving the loop early
    (``break``, an exception, or closing the generator) stops the thread after at most one more item.
    ``depth=0`` iterates in the calling thread (no overlap).
    """
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, not {depth}")
    if depth == 0:
        yield from iterable
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((_DONE, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=produce, name="vitreous-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
