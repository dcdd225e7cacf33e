"""`vault.threads`: results in order, a bounded window, errors handed back, no thread left.

The decoding, compressing and sealing paths run on `ordered_map`, and `Project` fetches the
key record's history with `Call`; their own tests (test_format_v2, test_envelope) cover them
end to end. These pin the contract those paths rely on, with real threads.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from vault.errors import ResourceError
from vault.threads import Call, ordered_map, produced_ahead


def _ours(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


def test_results_come_in_order_whatever_each_call_takes() -> None:
    rng = random.Random(7)
    delays = [rng.random() / 200 for _ in range(60)]

    def work(n: int) -> int:
        time.sleep(delays[n])
        return n * n

    got = list(ordered_map(work, range(60), workers=3, ahead=5, name="t-order"))
    assert got == [n * n for n in range(60)]
    assert _ours("t-order") == []


def test_no_more_than_ahead_calls_beyond_the_awaited_one() -> None:
    lock = threading.Lock()
    started: list[int] = []
    consumed: list[int] = []

    def work(n: int) -> int:
        with lock:
            started.append(n)
            # Item n starts only once the consumer took results up to n - ahead - 1.
            assert n <= len(consumed) + 4, (n, len(consumed))
        time.sleep(0.001)
        return n

    for value in ordered_map(work, range(40), workers=2, ahead=4, name="t-window"):
        consumed.append(value)
    assert consumed == list(range(40))
    assert sorted(started) == list(range(40))


def test_an_error_in_a_call_is_raised_in_order_and_stops_the_rest() -> None:
    ran: list[int] = []

    def work(n: int) -> int:
        ran.append(n)
        if n == 5:
            raise ValueError("five")
        return n

    got: list[int] = []
    with pytest.raises(ValueError, match="five"):
        for value in ordered_map(work, range(1000), workers=2, ahead=4, name="t-error"):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    assert max(ran) < 5 + 4 + 2  # nothing started after the window closed
    assert _ours("t-error") == []


def test_an_error_from_the_items_ends_the_workers() -> None:
    def items():
        yield 1
        yield 2
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(ordered_map(lambda n: n, items(), workers=2, ahead=4, name="t-items"))
    assert _ours("t-items") == []


def test_a_consumer_that_stops_early_leaves_no_thread_and_starts_nothing_more() -> None:
    ran: list[int] = []

    def work(n: int) -> int:
        ran.append(n)
        time.sleep(0.001)
        return n

    results = ordered_map(work, range(1000), workers=2, ahead=3, name="t-close")
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    assert _ours("t-close") == []
    count = len(ran)
    time.sleep(0.02)
    assert len(ran) == count <= 3 + 3 + 2


def test_call_returns_the_value_or_raises_the_error() -> None:
    assert Call(lambda: 42, "t-call").result() == 42

    def fail() -> None:
        raise KeyError("gone")

    pending = Call(fail, "t-call-fail")
    with pytest.raises(KeyError, match="gone"):
        pending.result()
    with pytest.raises(KeyError, match="gone"):
        pending.result()  # asked again: the same outcome


def test_call_runs_while_the_caller_goes_on() -> None:
    release = threading.Event()
    pending = Call(lambda: release.wait(5) and "done", "t-call-overlap")
    assert _ours("t-call-overlap")  # running, and the caller was not held up
    release.set()
    assert pending.result() == "done"


def test_call_wait_waits_for_the_end_and_raises_nothing() -> None:
    release = threading.Event()

    def fail() -> None:
        release.wait(5)
        raise KeyError("gone")

    pending = Call(fail, "t-call-wait")
    threading.Timer(0.05, release.set).start()
    pending.wait()  # the outcome is nobody's: no error here
    with pytest.raises(KeyError, match="gone"):
        pending.result()


def test_ordered_map_refuses_no_worker_or_no_window() -> None:
    with pytest.raises(ValueError):
        list(ordered_map(lambda n: n, [1], workers=0, ahead=4, name="t-none"))
    with pytest.raises(ValueError):
        list(ordered_map(lambda n: n, [1], workers=2, ahead=0, name="t-none"))


def test_produced_ahead_keeps_order_raises_errors_and_stops_with_its_consumer() -> None:
    assert list(produced_ahead(iter(range(50)), depth=3, name="t-ahead")) == list(range(50))

    def failing():
        yield 1
        raise OSError("read failed")

    with pytest.raises(OSError, match="read failed"):
        list(produced_ahead(failing(), depth=3, name="t-ahead-error"))

    made: list[int] = []

    def counted():
        for n in range(1000):
            made.append(n)
            yield n

    ahead = produced_ahead(counted(), depth=3, name="t-ahead-close")
    assert next(ahead) == 0
    ahead.close()
    assert _ours("t-ahead") == []
    count = len(made)
    time.sleep(0.02)
    assert len(made) == count < 10


def test_a_refused_worker_stops_the_ones_started_and_says_what_to_do(monkeypatch) -> None:
    """The system lets the first worker start and refuses the second (a process limit hit
    half way): the error is a ResourceError, nothing runs, and the first worker has ended.
    (tests/test_thread_limit.py refuses every thread for real, through the CLI.)"""
    real_start = threading.Thread.start

    def second_refused(thread: threading.Thread) -> None:
        if thread.name.endswith("-1"):
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", second_refused)
    ran: list[int] = []
    with pytest.raises(ResourceError, match="refused to start a thread") as refused:
        list(ordered_map(ran.append, range(10), workers=2, ahead=4, name="t-refused"))
    assert "pids.max" in str(refused.value) and ran == []
    assert _ours("t-refused") == []
    with pytest.raises(ResourceError):
        Call(lambda: ran.append(1), "t-refused-call-1")
    with pytest.raises(ResourceError):
        list(produced_ahead(iter(range(3)), depth=2, name="t-refused-ahead-1"))
    assert ran == []


def test_only_a_refused_thread_is_a_resource_error() -> None:
    """A thread started twice is a bug, not a process limit: it keeps its own error."""
    from vault.threads import start

    thread = threading.Thread(target=int, name="t-twice")
    start(thread)
    thread.join()
    with pytest.raises(RuntimeError, match="only be started once"):
        start(thread)
