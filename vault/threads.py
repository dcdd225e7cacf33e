"""Work on threads besides the main one: an ordered map over a few workers, one call in the
background, and an iterator produced ahead of its consumer.

They let work that releases the GIL (zlib, ISA-L, writes) or waits (a git child) overlap with
what the main thread does. The stdlib's concurrent.futures does the same, but importing it
(it brings `logging`) cost every command that reads or writes a large file about 6 ms.
Every thread here is a daemon that ends with its work or is joined before `ordered_map`
returns, so a command that finishes never leaves one behind (`cli.main.console` relies on it).
Every thread of sst-vault starts through `start`: a system that refuses one is a one-line error.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from vault.errors import LIMIT_HINT, ResourceError

T = TypeVar("T")
R = TypeVar("R")


def start(thread: threading.Thread) -> None:
    """`thread.start()`; a system that refuses the thread (a process limit such as a
    container's pids.max, or no memory for its stack) is a `ResourceError`, not a traceback.

    Callers clean up what they began before it (a git child, a duplicated descriptor).
    """
    try:
        thread.start()
    except RuntimeError as exc:
        # CPython's "can't start new thread" (pthread_create failed); any other RuntimeError
        # ("threads can only be started once") is a bug, and says so as itself.
        if "new thread" not in str(exc):
            raise
        raise ResourceError("the system refused to start a thread", LIMIT_HINT) from None


class _Task(Generic[R]):
    """One call to run on a thread, and its outcome once `done` is set."""

    def __init__(self, fn: Callable[[], R]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.cancelled = False
        self.value: R | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if not self.cancelled:
                self.value = self.fn()
        except BaseException as exc:  # handed to whoever waits, who raises it
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> R:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class Call(Generic[R]):
    """`fn()` started now on a daemon thread; `result()` waits for it and returns its value or
    raises its error. A caller that failed first and will not ask `wait()`s for it all the same
    when `fn` starts processes: the CLI ends with os._exit, which would leave them running."""

    def __init__(self, fn: Callable[[], R], name: str) -> None:
        self._task = _Task(fn)
        start(threading.Thread(target=self._task.run, name=name, daemon=True))

    def result(self) -> R:
        return self._task.result()

    def wait(self) -> None:
        """Wait for `fn()` to end, whatever its outcome (nobody will ask for it)."""
        self._task.done.wait()


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int, name: str
) -> Iterator[R]:
    """`map(fn, items)` on `workers` threads, in order, with at most `ahead` calls started
    beyond the result being waited for.

    `items` is consumed on the caller's thread. On an error (from `fn`, re-raised here, or
    from `items`), or when the caller stops early, nothing more starts and the workers have
    ended before this returns.
    """
    if workers < 1 or ahead < 1:
        raise ValueError(f"ordered_map needs a worker and a window, not {workers} and {ahead}")
    tasks: queue.SimpleQueue[_Task[R] | None] = queue.SimpleQueue()

    def serve() -> None:
        while (task := tasks.get()) is not None:
            task.run()

    started: list[threading.Thread] = []
    pending: deque[_Task[R]] = deque()
    try:
        for n in range(workers):
            thread = threading.Thread(target=serve, name=f"{name}-{n}", daemon=True)
            start(thread)
            started.append(thread)
        for item in items:
            task = _Task(functools.partial(fn, item))
            pending.append(task)
            tasks.put(task)
            while pending and (len(pending) > ahead or pending[0].done.is_set()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for task in pending:
            task.cancelled = True
        for _ in started:
            tasks.put(None)
        for thread in started:
            thread.join()


def produced_ahead(items: Iterator[T], *, depth: int, name: str) -> Iterator[T]:
    """`items` produced on a thread, up to `depth` items ahead of the consumer.

    Errors are re-raised in the consumer; a consumer that stops early stops the thread before
    this returns.
    """
    box: queue.Queue[object] = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(item)
            box.put(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            box.put(exc)

    worker = threading.Thread(target=work, name=name, daemon=True)
    start(worker)
    try:
        while (item := box.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.01)
        worker.join()
