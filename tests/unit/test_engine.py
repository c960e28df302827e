"""poolserve.engine.Engine with a fake backend: batching, ordering, admission, faults."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from poolserve.engine import Engine
from poolserve.errors import EngineUnavailable, InternalError, Overloaded
from poolserve.models.base import Batch, TokenSeq

POISON = 666  # a sequence starting with this id makes the fake forward raise


class FakeBackend:
    """Returns ``[len(seq), first id]`` per sequence and records every batch it saw.

    ``gate``: when set to an unset Event, each forward waits for it (so tests can pile
    work up behind a running batch). ``fail_on``: raise when a batch holds a sequence
    whose first id is this. ``short_by``: return that many outputs too few.
    """

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, ...]]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_on: int | None = POISON
        self.short_by = 0

    def forward(self, batch: Batch) -> Sequence[np.ndarray]:
        seqs = [tuple(s.token_ids) for s in batch.sequences]
        self.batches.append(seqs)
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=10):
            raise RuntimeError("test gate never opened")
        if self.fail_on is not None and any(s[0] == self.fail_on for s in seqs):
            raise RuntimeError("boom")
        outs = [np.array([len(s), s[0]], dtype=np.float32) for s in seqs]
        return outs[: len(outs) - self.short_by]

    def warmup(self) -> None:
        pass

    @property
    def seen(self) -> list[tuple[int, ...]]:
        return [s for b in self.batches for s in b]


def seq(length: int, tag: int) -> TokenSeq:
    """A sequence of ``length`` tokens whose first id is ``tag``."""
    return TokenSeq(token_ids=(tag, *([1] * (length - 1))))


def expected(seqs: Sequence[TokenSeq]) -> list[list[float]]:
    return [[float(len(s)), float(s.token_ids[0])] for s in seqs]


def as_lists(outputs: Sequence[np.ndarray]) -> list[list[float]]:
    return [o.tolist() for o in outputs]


async def wait_entered(backend: FakeBackend) -> None:
    assert await asyncio.to_thread(backend.entered.wait, 5), "the forward never started"


async def until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.002)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def engine(backend: FakeBackend) -> AsyncIterator[Engine]:
    eng = Engine(backend, max_num_batched_tokens=256, max_num_seqs=32, max_queued_requests=8)
    await eng.start()
    yield eng
    if backend.gate is not None:
        backend.gate.set()
    await eng.stop(grace=5)


def blocking_first_forward(backend: FakeBackend) -> threading.Event:
    gate = threading.Event()
    backend.gate = gate
    return gate


# -- ordering and batching --------------------------------------------------


async def test_results_in_input_order(engine: Engine) -> None:
    rng = random.Random(0)
    seqs = [seq(rng.randint(1, 30), tag) for tag in range(2, 60)]
    out = await engine.submit(seqs)
    assert as_lists(out) == expected(seqs)
    assert all(o.dtype == np.float32 for o in out)


async def test_empty_submit_returns_empty(engine: Engine, backend: FakeBackend) -> None:
    assert await engine.submit([]) == []
    assert backend.batches == []


async def test_concurrent_requests_each_get_their_own_results_in_order(
    engine: Engine, backend: FakeBackend
) -> None:
    rng = random.Random(1)
    requests = [
        [seq(rng.randint(1, 20), 1000 * r + i) for i in range(rng.randint(1, 6))]
        for r in range(1, 8)
    ]
    outs = await asyncio.gather(*(engine.submit(r) for r in requests))
    for req, out in zip(requests, outs, strict=True):
        assert as_lists(out) == expected(req)


async def test_concurrent_requests_share_batches(engine: Engine, backend: FakeBackend) -> None:
    gate = blocking_first_forward(backend)
    first = asyncio.create_task(engine.submit([seq(4, 2)]))
    await wait_entered(backend)
    others = [asyncio.create_task(engine.submit([seq(4, 10 + i)])) for i in range(5)]
    await until(lambda: engine.queued_sequences == 5)
    gate.set()
    await asyncio.gather(first, *others)
    assert len(backend.batches) == 2
    assert sorted(s[0] for s in backend.batches[1]) == [10, 11, 12, 13, 14]
    assert engine.stats.batches == 2 and engine.stats.sequences == 6


async def test_batches_are_length_homogeneous_and_within_budget(backend: FakeBackend) -> None:
    eng = Engine(backend, max_num_batched_tokens=256, max_num_seqs=128)
    await eng.start()
    try:
        seqs = [seq(4, 2)] * 128 + [seq(64, 3)] * 8
        random.Random(2).shuffle(seqs)
        out = await eng.submit(seqs)
    finally:
        await eng.stop()
    assert as_lists(out) == expected(seqs)
    lengths = [sorted({len(s) for s in b}) for b in backend.batches]
    assert lengths == [[4], [4], [64], [64]]
    for b in backend.batches:
        assert len(b) * max(len(s) for s in b) <= 256
    # Nothing was padded: every batch held rows of one length.
    assert eng.stats.padded_tokens == eng.stats.tokens == 128 * 4 + 8 * 64


async def test_mixed_lengths_are_packed_sorted(backend: FakeBackend) -> None:
    eng = Engine(backend, max_num_batched_tokens=100, max_num_seqs=64)
    await eng.start()
    try:
        rng = random.Random(3)
        seqs = [seq(rng.randint(1, 50), 2) for _ in range(200)]
        out = await eng.submit(seqs)
    finally:
        await eng.stop()
    assert as_lists(out) == expected(seqs)
    assert sorted(backend.seen) == sorted(tuple(s.token_ids) for s in seqs)
    spans = [(min(map(len, b)), max(map(len, b))) for b in backend.batches]
    for b in backend.batches:
        assert len(b) <= 64
        assert len(b) * max(map(len, b)) <= 100
    # One request: batches walk the sorted queue, so their length ranges never overlap.
    for (_, hi1), (lo2, _) in itertools.pairwise(spans):
        assert hi1 <= lo2


async def test_thousand_sequences_split_by_budget(backend: FakeBackend) -> None:
    eng = Engine(backend, max_num_batched_tokens=1000, max_num_seqs=256)
    await eng.start()
    try:
        seqs = [seq(10, i % 500 + 2) for i in range(1000)]
        out = await eng.submit(seqs)
    finally:
        await eng.stop()
    assert as_lists(out) == expected(seqs)
    assert len(backend.batches) == 10
    assert all(len(b) == 100 for b in backend.batches)
    assert eng.stats.sequences == 1000 and eng.stats.batches == 10


async def test_over_budget_sequence_runs_alone(backend: FakeBackend) -> None:
    eng = Engine(backend, max_num_batched_tokens=50, max_num_seqs=8)
    await eng.start()
    try:
        seqs = [seq(3, 2), seq(80, 3), seq(3, 4)]
        out = await eng.submit(seqs)
    finally:
        await eng.stop()
    assert as_lists(out) == expected(seqs)
    assert [len(b) for b in backend.batches] == [2, 1]
    assert [len(s) for s in backend.batches[1]] == [80]


# -- admission -----------------------------------------------------------------


async def test_overloaded_past_max_queued_requests(engine: Engine, backend: FakeBackend) -> None:
    gate = blocking_first_forward(backend)
    tasks = [asyncio.create_task(engine.submit([seq(3, 10 + i)])) for i in range(8)]
    await wait_entered(backend)
    await until(lambda: engine.admitted_requests == 8)
    with pytest.raises(Overloaded) as info:
        await engine.submit([seq(3, 99)])
    assert info.value.status == 429 and info.value.retry_after >= 1
    gate.set()
    outs = await asyncio.gather(*tasks)
    assert [o[0].tolist() for o in outs] == [[3.0, 10.0 + i] for i in range(8)]
    # Capacity is back once they are answered.
    assert as_lists(await engine.submit([seq(3, 99)])) == [[3.0, 99.0]]
    assert engine.admitted_requests == 0


async def test_submit_before_start_is_unavailable(backend: FakeBackend) -> None:
    eng = Engine(backend)
    assert not eng.alive
    with pytest.raises(EngineUnavailable):
        await eng.submit([seq(3, 2)])


# -- cancellation --------------------------------------------------------------


async def test_cancelled_request_is_dropped_from_the_queue(
    engine: Engine, backend: FakeBackend
) -> None:
    gate = blocking_first_forward(backend)
    first = asyncio.create_task(engine.submit([seq(4, 2)]))
    await wait_entered(backend)
    doomed = asyncio.create_task(engine.submit([seq(5, 50), seq(6, 51), seq(7, 52)]))
    kept = asyncio.create_task(engine.submit([seq(5, 60)]))
    await until(lambda: engine.queued_sequences == 4)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert engine.queued_sequences == 1
    assert engine.stats.dropped_sequences == 3
    gate.set()
    await first
    assert as_lists(await kept) == [[5.0, 60.0]]
    assert not {50, 51, 52} & {s[0] for s in backend.seen}
    assert engine.admitted_requests == 0


async def test_cancel_while_in_flight_does_not_break_the_engine(
    engine: Engine, backend: FakeBackend
) -> None:
    gate = blocking_first_forward(backend)
    task = asyncio.create_task(engine.submit([seq(4, 2), seq(4, 3)]))
    await wait_entered(backend)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats.dropped_sequences == 0  # nothing was queued any more
    gate.set()
    assert as_lists(await engine.submit([seq(2, 7)])) == [[2.0, 7.0]]
    assert engine.alive


# -- faults --------------------------------------------------------------------


async def test_failed_forward_fails_only_its_batch(engine: Engine, backend: FakeBackend) -> None:
    gate = blocking_first_forward(backend)
    first = asyncio.create_task(engine.submit([seq(4, 2)]))
    await wait_entered(backend)
    # Lengths 3 and 200 cannot share a batch under a budget of 256 tokens.
    bad = asyncio.create_task(engine.submit([seq(3, POISON), seq(3, 5)]))
    good = asyncio.create_task(engine.submit([seq(200, 7)]))
    await until(lambda: engine.queued_sequences == 3)
    gate.set()
    await first
    with pytest.raises(InternalError) as info:
        await bad
    assert info.value.status == 500 and "boom" in info.value.message
    assert as_lists(await good) == [[200.0, 7.0]]
    assert engine.stats.failed_batches == 1
    # The engine keeps serving.
    assert as_lists(await engine.submit([seq(3, 8)])) == [[3.0, 8.0]]
    assert engine.alive


async def test_failed_request_leaves_no_queued_sequences(backend: FakeBackend) -> None:
    # A request split over several batches: the first batch fails, the rest are not run.
    eng = Engine(backend, max_num_batched_tokens=4, max_num_seqs=4)
    await eng.start()
    try:
        with pytest.raises(InternalError):
            await eng.submit([seq(1, POISON)] + [seq(4, 3)] * 5)
        assert eng.queued_sequences == 0
        assert len(backend.batches) == 1
        assert as_lists(await eng.submit([seq(2, 9)])) == [[2.0, 9.0]]
    finally:
        await eng.stop()


async def test_wrong_output_count_fails_only_its_batch(backend: FakeBackend) -> None:
    eng = Engine(backend)
    await eng.start()
    try:
        backend.short_by = 1
        with pytest.raises(InternalError):
            await eng.submit([seq(3, 2), seq(3, 3)])
        backend.short_by = 0
        assert as_lists(await eng.submit([seq(3, 4)])) == [[3.0, 4.0]]
    finally:
        with contextlib.suppress(Exception):
            await eng.stop()


@pytest.fixture
async def broken_engine(backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A started engine whose packing loop raises on its first batch."""
    eng = Engine(backend)
    await eng.start()

    def broken() -> None:
        raise RuntimeError("packer exploded")

    monkeypatch.setattr(eng, "_next_batch", broken)
    return eng


async def test_dead_loop_fails_waiters_and_reports_not_alive(broken_engine: Engine) -> None:
    eng = broken_engine
    try:
        with pytest.raises(EngineUnavailable, match="packer exploded"):
            await eng.submit([seq(3, 2)])
        assert not eng.alive
        with pytest.raises(EngineUnavailable):
            await eng.submit([seq(3, 2)])
    finally:
        with contextlib.suppress(Exception):
            await eng.stop()


async def test_stop_after_loop_death_is_clean(broken_engine: Engine) -> None:
    with pytest.raises(EngineUnavailable):
        await broken_engine.submit([seq(3, 2)])
    await broken_engine.stop()  # must not raise
    assert broken_engine._executor is None


# -- lifecycle -----------------------------------------------------------------


async def test_stop_drains_queued_work_then_rejects(backend: FakeBackend) -> None:
    eng = Engine(backend, max_num_batched_tokens=256, max_num_seqs=2)
    await eng.start()
    gate = blocking_first_forward(backend)
    tasks = [asyncio.create_task(eng.submit([seq(4, 10 + i)])) for i in range(5)]
    await wait_entered(backend)
    stopper = asyncio.create_task(eng.stop())
    await asyncio.sleep(0.01)
    with pytest.raises(EngineUnavailable):
        await eng.submit([seq(4, 99)])
    assert not stopper.done()
    gate.set()
    outs = await asyncio.gather(*tasks)
    await stopper
    assert [o[0].tolist() for o in outs] == [[4.0, 10.0 + i] for i in range(5)]
    assert not eng.alive
    with pytest.raises(EngineUnavailable):
        await eng.submit([seq(4, 99)])


async def test_stop_after_grace_fails_queued_requests(backend: FakeBackend) -> None:
    eng = Engine(backend, max_num_batched_tokens=256, max_num_seqs=1)
    await eng.start()
    gate = blocking_first_forward(backend)
    running = asyncio.create_task(eng.submit([seq(4, 2)]))
    await wait_entered(backend)
    queued = asyncio.create_task(eng.submit([seq(4, 3)]))
    await until(lambda: eng.queued_sequences == 1)
    # stop() waits for the model thread; open the gate from outside the loop.
    threading.Timer(0.2, gate.set).start()
    await eng.stop(grace=0.05)
    for task in (running, queued):
        with pytest.raises(EngineUnavailable):
            await task
    assert [s[0] for s in backend.seen] == [2]


async def test_restart_after_stop(backend: FakeBackend) -> None:
    eng = Engine(backend)
    await eng.start()
    await eng.stop()
    await eng.start()
    try:
        assert as_lists(await eng.submit([seq(3, 5)])) == [[3.0, 5.0]]
    finally:
        await eng.stop()


async def test_observer_sees_batches_and_drops(backend: FakeBackend) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.batches: list[tuple[int, int, int]] = []
            self.dropped = 0
            self.queue_times = 0

        def on_batch(self, size: int, tokens: int, padded: int, seconds: float) -> None:
            self.batches.append((size, tokens, padded))

        def on_queue_time(self, seconds: float) -> None:
            self.queue_times += 1

        def on_queue_depth(self, sequences: int) -> None:
            pass

        def on_dropped(self, sequences: int) -> None:
            self.dropped += sequences

    rec = Recorder()
    eng = Engine(backend, max_num_batched_tokens=64, observer=rec)
    await eng.start()
    try:
        await eng.submit([seq(2, 3), seq(4, 4)])
    finally:
        await eng.stop()
    assert rec.batches == [(2, 6, 8)]
    assert rec.queue_times == 1
    assert (eng.stats.tokens, eng.stats.padded_tokens) == (6, 8)


# -- heap trimming ----------------------------------------------------------


async def test_heap_is_trimmed_off_the_request_path_after_forwards(
    backend: FakeBackend,
) -> None:
    from poolserve.engine.heap import HeapTrimmer

    heap = HeapTrimmer(interval=0.05)
    if not heap.available:
        pytest.skip("this C library has no malloc_trim")
    eng = Engine(backend, max_num_batched_tokens=4, heap=heap)
    await eng.start()
    try:
        await asyncio.sleep(0.2)
        assert heap.trims == 0  # nothing ran: nothing to give back
        for i in range(3):
            await eng.submit([seq(3, 10 + i)])
        await until(lambda: heap.trims >= 1)  # a trim follows the forwards
        trimmed = heap.trims
        await asyncio.sleep(0.2)
        assert heap.trims == trimmed  # idle: no more trims
        await eng.submit([seq(3, 20)])  # traffic again: trimmed again once it stops
        await until(lambda: heap.trims == trimmed + 1)
    finally:
        await eng.stop()
    assert heap._thread is None  # stop() ends the thread
