"""Decode ahead and encode behind in threads, so that decoding, the method and encoding overlap.

PyAV (FFmpeg), OpenCV, NumPy and PyTorch release the GIL in their heavy calls, so a reader thread and a writer
thread beside the method's thread keep two or more cores busy. The decoder and x264 run with one thread each, in
these threads (the method's threads already fill the cores), so ``cpu_s`` is all that decoding and encoding cost.
Queues are small and bounded: memory stays flat and frames keep their order. An exception in either thread is
raised again, unchanged, in the thread that uses it; an exception in the caller stops both threads before it
propagates (so a writer is aborted only once its thread is done with it).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterable, Iterator

_POLL = 0.1  # seconds between checks for a stop request, so SIGTERM/Ctrl-C in the main thread stay prompt
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetch:
    """Iterate ``items`` in a background thread, ``size`` items ahead; use as a context manager.

    ``busy_s``: seconds the thread spent producing items (decoding), for benchmarks; ``cpu_s``: the CPU time it
    spent on them (the thread's own, :func:`time.thread_time`).
    """

    def __init__(self, items: Iterable, size: int = 4, name: str = "vdiffdeblur-reader"):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.busy_s = self.cpu_s = 0.0

    def __enter__(self) -> "Prefetch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        it = iter(self._items)
        try:
            while not self._stop.is_set():
                t0, c0 = time.perf_counter(), time.thread_time()
                try:
                    item = next(it)
                except StopIteration:
                    self._put(_END)
                    return
                self.busy_s += time.perf_counter() - t0
                self.cpu_s += time.thread_time() - c0
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, who raises it as if it had iterated itself
            self._put(_Failed(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a generator's cleanup (closing the file) runs in the thread that ran it

    def __iter__(self) -> Iterator:
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the reader thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class BackgroundWriter:
    """Call ``write(*args)`` for every :meth:`put` in a background thread, in order, ``size`` items behind, and
    ``done()`` (if given: e.g. draining an encoder) after the last one.

    :meth:`finish` waits for every item and ``done``, and raises the first error the thread met; an error is also
    raised by the next :meth:`put`. Leaving the context with an exception drops what is queued and joins the thread.
    ``busy_s``: seconds the thread spent writing (encoding), for benchmarks; ``cpu_s``: the CPU time it spent
    writing (the thread's own, :func:`time.thread_time`).
    """

    def __init__(self, write, size: int = 4, name: str = "vdiffdeblur-writer", done=None):
        self._write = write
        self._done = done
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.busy_s = self.cpu_s = 0.0

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop.set()
        self._join()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if self._stop.is_set() or (item is _END and self._done is None):
                return
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                self._done() if item is _END else self._write(*item)
            except BaseException as e:
                self._error = e
                self._stop.set()
                return
            self.busy_s += time.perf_counter() - t0
            self.cpu_s += time.thread_time() - c0
            if item is _END:
                return

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, *args) -> None:
        while True:
            self._raise()
            if self._stop.is_set():
                raise RuntimeError("the writer thread has stopped")
            try:
                self._queue.put(args, timeout=_POLL)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every item is written; raise the writer's error, if any."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=_POLL)
                break
            except queue.Full:
                continue
        self._join()
        self._raise()

    def _join(self) -> None:
        while self._thread.is_alive():
            self._thread.join(timeout=_POLL)
