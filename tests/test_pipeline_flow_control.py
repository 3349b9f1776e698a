"""The consume loop's pacing and backpressure decisions, on a stand-in consumer (no server needed).

Regressions these guard: a caught-up consumer that spins in poll() on a broker answering empty fetches at
once, a loop that spins when a due batch cannot be dispatched, a batcher that grows without bound, and a
commit that holds the loop while a broker hangs."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError
from kafka.future import Future as KafkaFuture
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from finsent.app import LABELER_READY_WITHIN_S
from finsent.metrics import PipelineMetrics
from finsent.processing import Batch, Labeled
from finsent.runner import BUSY_WAIT_S, COMMIT_TIMEOUT_MS, FIRST_IDLE_WAIT_S, InFlight, PipelineRunner
from finsent.settings import Settings
from finsent.watermarks import Watermark, parse_watermark
from tests.pipeline_helpers import FakeLabeler

TP = TopicPartition("raw", 0)
TP2 = TopicPartition("raw", 1)


class StandInConsumer:
    """Just the assignment / pause bookkeeping PipelineRunner's flow control uses."""

    def __init__(self) -> None:
        self._paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int | None = None) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)


def runner(**pipeline: Any) -> PipelineRunner:
    settings = Settings(
        elasticsearch={"enabled": False},
        pipeline={"batch_max_messages": 4, "max_batches_in_flight": 2, "idle_backoff_max_ms": 40, **pipeline},
    )
    return PipelineRunner(
        settings,
        labeler=FakeLabeler(),
        consumer=StandInConsumer(),  # type: ignore[arg-type]
        outputs=object(),  # type: ignore[arg-type]
        es=None,
        metrics=PipelineMetrics(CollectorRegistry()),
        stop=threading.Event(),
    )


def pending_batch() -> InFlight:
    return InFlight(Batch(records=[], offsets={}, ingested_at=None), Future())  # type: ignore[arg-type]


def fill(r: PipelineRunner, n: int, now: float) -> None:
    for i in range(n):
        r.batcher.add((TP, i, None), now)  # type: ignore[arg-type]


def test_idle_polls_back_off_and_records_reset_it() -> None:
    r = runner()
    waits = [r._wait_s(0.0, got_records=False) for _ in range(6)]
    assert waits == [FIRST_IDLE_WAIT_S, 0.01, 0.02, 0.04, 0.04, 0.04]
    assert r._wait_s(0.0, got_records=True) == 0.0
    assert r._wait_s(0.0, got_records=False) == FIRST_IDLE_WAIT_S


def test_no_backoff_setting_still_never_spins() -> None:
    r = runner(idle_backoff_max_ms=0)
    assert {r._wait_s(0.0, got_records=False) for _ in range(3)} == {FIRST_IDLE_WAIT_S}


def test_full_pipeline_waits_even_with_an_overdue_batch() -> None:
    r = runner()
    r.inflight.extend([pending_batch(), pending_batch()])
    fill(r, 2, now=0.0)  # overdue at t=10 s, but no room to dispatch it
    assert r.batcher.time_left(10.0) == 0.0
    assert r._wait_s(10.0, got_records=False) == BUSY_WAIT_S


def test_busy_model_waits_until_the_partial_batch_is_due() -> None:
    r = runner(batch_max_wait_ms=20)
    r._labeling = Future()
    assert r._wait_s(0.0, got_records=True) == BUSY_WAIT_S  # nothing waiting: wake when the model is done
    fill(r, 1, now=0.0)
    assert abs(r._wait_s(0.005, got_records=True) - 0.015) < 1e-9
    done: Future[Labeled] = Future()
    done.set_result(Labeled([], {}, 0.0))
    r._labeling = done
    r.batcher.drain()
    assert r._wait_s(0.005, got_records=False) == FIRST_IDLE_WAIT_S  # model idle, nothing to do


def test_idle_model_takes_a_partial_batch_after_the_linger() -> None:
    r = runner(batch_max_wait_ms=200, batch_linger_ms=30)
    fill(r, 1, now=0.0)
    assert not r._dispatch_due(0.01)
    assert abs(r._wait_s(0.01, got_records=True) - 0.02) < 1e-9  # sleeps out the linger, no polls between
    assert r._dispatch_due(0.03)
    r._labeling = Future()  # busy: the batch may wait for batch_max_wait_ms
    assert not r._dispatch_due(0.03)


def test_a_model_busy_most_of_the_last_seconds_takes_a_partial_batch_at_once() -> None:
    """Near saturation the model's idle time while a batch lingers is capacity lost."""
    r = runner(batch_max_wait_ms=200, batch_linger_ms=30)
    r.model_busy.add(10.0, 0.9 * r.model_busy.window_s)
    fill(r, 1, now=10.0)
    assert r._dispatch_due(10.0)
    later = 10.0 + r.model_busy.window_s
    assert r.model_busy.share(later) == 0.0  # the window has passed: lingers again
    r.batcher.drain()
    fill(r, 1, now=later)
    assert not r._dispatch_due(later)


def test_without_linger_an_idle_model_takes_a_batch_at_once() -> None:
    r = runner(batch_linger_ms=0)
    fill(r, 1, now=0.0)
    assert r._dispatch_due(0.0)


def test_partitions_pause_while_full_or_while_a_whole_batch_waits() -> None:
    r = runner()
    consumer = r.consumer
    r._flow_control()
    assert not consumer.paused()
    fill(r, 4, now=0.0)  # a whole batch waits: nothing more is needed yet
    r._flow_control()
    assert consumer.paused() == {TP}
    r.batcher.take()
    r._flow_control()
    assert not consumer.paused()
    r.inflight.extend([pending_batch(), pending_batch()])
    r._flow_control()
    assert consumer.paused() == {TP}


class TwoPartitions(StandInConsumer):
    """Two input partitions, as after a rebalance that kept one of them (and its pause) and added one."""

    def assignment(self) -> set[TopicPartition]:
        return {TP, TP2}


def test_flow_control_pauses_every_partition_or_none() -> None:
    """kafka-python keeps a partition paused when it is assigned again, while a new one comes unpaused;
    some paused and some not is the state its record parking gets wrong (a partition stopped for good:
    finsent.kafka_internals.release_parked_records). Pausing tops up to all; a revoke starts over."""
    import asyncio

    r = runner()
    r.consumer = TwoPartitions()  # type: ignore[assignment]
    r.consumer.pause(TP)  # kept from the previous generation
    r.inflight.extend([pending_batch(), pending_batch()])
    r._flow_control()
    assert r.consumer.paused() == {TP, TP2}
    r.inflight.clear()
    r._flow_control()
    assert not r.consumer.paused()
    r.consumer.pause(TP)
    asyncio.run(r.on_revoked({TP, TP2}))
    assert not r.consumer.paused()


class LagConsumer(StandInConsumer):
    """Answers end offsets from `ends`, or fails as a broker that does not answer in time."""

    def __init__(self, highwater: int) -> None:
        super().__init__()
        self._highwater = highwater
        self.ends: dict[TopicPartition, int] | None = None

    def highwater(self, tp: TopicPartition) -> int:
        return self._highwater

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        if self.ends is None:
            raise KafkaTimeoutError(f"end offsets not received in {timeout_ms} ms")
        return self.ends


def test_lag_falls_back_to_the_highwater_and_counts_it() -> None:
    r, registry = runner(), CollectorRegistry()
    r.metrics = PipelineMetrics(registry)
    consumer = LagConsumer(highwater=100)
    r.consumer = consumer  # type: ignore[assignment]
    r.positions[TP] = 40

    def lag_and_fallbacks() -> tuple[float | None, float | None]:
        lag = registry.get_sample_value("finsent_consumer_lag_messages", {"topic": "raw", "partition": "0"})
        return lag, registry.get_sample_value("finsent_consumer_lag_fallbacks_total")

    r._update_lag(1000.0)
    assert lag_and_fallbacks() == (60, 1)
    consumer.ends = {TP: 150}  # the broker answers again: its end offset is newer than the last fetch's
    r._update_lag(1001.0)
    assert lag_and_fallbacks() == (110, 1)


class WatermarkOutputs:
    """Records the watermarks the runner sends."""

    def __init__(self) -> None:
        self.sent: list[Watermark] = []

    def send_watermark(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.sent.append(parse_watermark(value))


def test_a_watermark_claims_only_what_the_outputs_have_written() -> None:
    """Also: offset 9 is a transaction marker (never returned to a consumer, but the log end counts it),
    and an input topic that does not exist is left out instead of holding every watermark back."""
    r = runner(watermark_interval_s=1, input_topics=["raw", "not-created-yet"])
    consumer = LagConsumer(highwater=10)
    consumer.ends = {TP: 10}
    consumer._cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0} if topic == "raw" else None)
    consumer.position = lambda tp, timeout_ms=None: 10  # type: ignore[attr-defined]
    outputs = WatermarkOutputs()
    r.consumer, r.outputs = consumer, outputs  # type: ignore[assignment]
    r.positions[TP] = 9  # read to the end, but offsets 6-8 are in a batch not yet written
    held = InFlight(Batch(records=[], offsets={TP: 9}, ingested_at=None), Future())  # type: ignore[arg-type]
    r.inflight.append(held)
    r.written[TP] = 6
    r._watermark(r._update_lag(100.0), now=0.0)
    assert r._watermarking is None and not outputs.sent  # nothing claimable yet

    held.future.set_result(Labeled([], {}, 0.0))
    r._collect_done(block=False)  # written (and committed) up to 9; the position is past the marker
    assert consumer.commits == [{TP: 9}]
    r._watermark(r._update_lag(101.0), now=0.5)
    assert r._watermarking is not None
    r._watermarking.result(timeout=5)
    assert outputs.sent == [Watermark({"raw": 1}, {("raw", 0): 101.0}, "finsent-labelers")]
    r._watermark(r._update_lag(102.0), now=1.0)  # within the interval: nothing more
    assert len(outputs.sent) == 1


def test_no_watermark_claims_records_a_revoke_dropped_before_they_are_rewound() -> None:
    """An eager rebalance drops the batcher's records at the revoke; until the join completes the
    partition is still assigned and the consumer's position still past them (on_assigned rewinds it)."""
    import asyncio

    r = runner(watermark_interval_s=1)
    consumer = LagConsumer(highwater=10)
    consumer.ends = {TP: 10}
    consumer._cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0})
    consumer.position = lambda tp, timeout_ms=None: 10  # type: ignore[attr-defined]
    consumer.seek = lambda tp, offset: None  # type: ignore[attr-defined]
    outputs = WatermarkOutputs()
    r.consumer, r.outputs = consumer, outputs  # type: ignore[assignment]
    for offset in range(6, 10):  # read to the log end, waiting in the batcher
        r.batcher.add((TP, offset, None), 0.0)  # type: ignore[arg-type]
        r.positions[TP] = offset + 1
    asyncio.run(r.on_revoked({TP}))
    assert r.rewind == {TP: 6}
    r._watermark(r._update_lag(101.0), now=2.0)
    assert r._watermarking is None and not outputs.sent
    r.on_assigned({TP})  # the join completes: position 6 again, and those records are read anew
    consumer.position = lambda tp, timeout_ms=None: 6  # type: ignore[attr-defined]
    r._watermark(r._update_lag(102.0), now=3.0)
    assert r._watermarking is None and not outputs.sent  # the log end (10) is not reached yet


def test_batches_dropped_at_a_revoke_hold_their_place_until_they_finish() -> None:
    """They keep running in the executors (writes are idempotent): counted, so that rebalances during an
    output outage cannot pile up batches in memory."""
    import asyncio

    r = runner()
    dropped = [pending_batch(), pending_batch()]
    r.inflight.extend(dropped)
    asyncio.run(r.on_revoked({TP}))
    assert not r.inflight and len(r.dropped) == 2
    r._flow_control()
    assert r.consumer.paused() == {TP}
    assert r._wait_s(0.0, got_records=False) == BUSY_WAIT_S
    for d in dropped:
        d.future.set_result(None)
    r._flow_control()
    assert not r.consumer.paused() and r._batches_held() == 0


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A broker that hangs: it accepts connections and never answers a request."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_a_commit_to_a_hanging_broker_times_out_and_the_loop_goes_on(
    silent_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """kafka-python waits request_timeout_ms (30 s) for a commit by default: longer than the readiness
    window, so a hanging broker turned every labeler unready. The commit is bounded, and its timeout is a
    failed commit like any other: a warning, the messages count as written, the loop goes on."""
    assert COMMIT_TIMEOUT_MS / 1000 < LABELER_READY_WITHIN_S
    assert Settings().kafka.max_poll_interval_ms > 10 * COMMIT_TIMEOUT_MS  # well below it
    r = runner()
    consumer = KafkaConsumer(
        bootstrap_servers=silent_broker, group_id="g", enable_auto_commit=False, api_version=(2, 5)
    )
    r.consumer = consumer
    done: Future[Labeled] = Future()
    done.set_result(Labeled([], {}, 0.0))
    r.inflight.append(InFlight(Batch(records=[], offsets={TP: 7}, ingested_at=datetime.now(tz=UTC)), done))
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="finsent.runner"):
            r._collect_done(block=False)
        took = time.monotonic() - started
    finally:
        consumer.close(autocommit=False)
    assert COMMIT_TIMEOUT_MS / 1000 - 0.5 < took < LABELER_READY_WITHIN_S
    assert "offset commit not acknowledged within 5000 ms" in caplog.text
    assert not r.inflight and r.written == {TP: 7}


class RevokingConsumer(StandInConsumer):
    """Answers commit_async with `future`; its IO loop's sleep is asyncio's (on_revoked runs there)."""

    def __init__(self, future: KafkaFuture) -> None:
        super().__init__()
        self.future = future
        self.sent: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self._net = SimpleNamespace(sleep=asyncio.sleep)

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> KafkaFuture:
        self.sent.append(offsets)
        return self.future


@pytest.mark.parametrize("answered", [True, False])
def test_the_commit_on_revoke_waits_a_bounded_time(
    answered: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that never answers must not hold the rebalance (and the consume loop) for the client's
    request timeout: the written batches' commit is waited for COMMIT_TIMEOUT_MS, then given up."""
    monkeypatch.setattr("finsent.runner.COMMIT_TIMEOUT_MS", 200)
    future = KafkaFuture()
    if answered:
        future.success(None)
    consumer = RevokingConsumer(future)
    r = runner()
    r.consumer = consumer  # type: ignore[assignment]
    written = InFlight(Batch(records=[], offsets={TP: 5}, ingested_at=None), Future())  # type: ignore[arg-type]
    written.future.set_result(None)
    r.inflight.append(written)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finsent.runner"):
        asyncio.run(r.on_revoked({TP}))
    elapsed = time.monotonic() - started
    assert [{tp: o.offset for tp, o in c.items()} for c in consumer.sent] == [{TP: 5}]
    if answered:
        assert "offset commit" not in caplog.text  # answered: nothing given up on
    else:
        assert 0.2 <= elapsed < 10.0  # given up on: the future is never answered
        assert "offset commit on revoke not acknowledged within 200 ms" in caplog.text
