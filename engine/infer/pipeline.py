"""Two-thread helpers that overlap I/O with inference: decoding and letterboxing run ahead of the
model in one thread, postprocessing, drawing and encoding run behind it in another. OpenCV and
torch release the GIL in their heavy calls, so the model's thread stays busy."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Yield `items`, produced by a background thread up to `depth` ahead. An exception in the
    producer is raised here, in the consumer; stopping early releases the producer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(_Failure(e))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so a blocked producer can see the stop flag
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


class Behind:
    """Runs `fn(item)` for every submitted item, in order, in a background thread. `close()` waits
    for the backlog and re-raises the first error; a failed consumer fails the next `submit`."""

    def __init__(self, fn: Callable[[T], None], depth: int = 4):
        self.fn, self.error = fn, None
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._consume, name="behind", daemon=True)
        self.thread.start()

    def _consume(self) -> None:
        while (item := self.q.get()) is not _END:
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in submit/close
                    self.error = e

    def submit(self, item: T) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        if self.thread.is_alive():
            self.q.put(_END)
            self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
