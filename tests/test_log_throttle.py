"""kafka-python's repeated log lines (every reconnect attempt during a broker outage) pass once a minute per
message template, with a count of those held back; other loggers are untouched."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import pytest

from finsent import log_throttle
from finsent.log_throttle import RepeatThrottle, throttle_library_logs
from finsent.runner import make_consumer
from finsent.settings import Settings
from tests.servers import Tansu


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_template_passes_once_per_interval_and_then_counts_the_rest() -> None:
    clock = Clock()
    throttle = RepeatThrottle(("kafka",), interval_s=60, clock=clock)
    template = "Bootstrap connection to %s failed: %s (backoff %.2f secs)"
    first = record("kafka.net.manager", template, "b-0", "refused", 0.9)
    assert throttle.filter(first)
    assert first.getMessage() == "Bootstrap connection to b-0 failed: refused (backoff 0.90 secs)"
    held = [throttle.filter(record("kafka.net.manager", template, "b-0", "refused", 1.1)) for _ in range(7)]
    assert held == [False] * 7
    clock.now += 59.9
    assert not throttle.filter(record("kafka.net.manager", template, "b-1", "refused", 1.0))
    clock.now += 0.2
    again = record("kafka.net.manager", template, "b-0", "refused", 1.0)
    assert throttle.filter(again)
    assert again.getMessage() == (
        "Bootstrap connection to b-0 failed: refused (backoff 1.00 secs)"
        " [and 8 more like this in the last 60 s]"
    )
    clock.now += 60
    quiet_again = record("kafka.net.manager", template, "b-0", "refused", 1.0)
    assert throttle.filter(quiet_again)
    assert "more like this" not in quiet_again.getMessage()


def test_every_handler_gets_the_same_decision_and_one_suffix() -> None:
    """One filter on two root handlers (a console and a file, or pytest's): the second handler's check
    found the record a repeat of itself and dropped it, and a passing record got the suffix twice."""
    clock = Clock()
    throttle = RepeatThrottle(("kafka",), interval_s=60, clock=clock)
    logger = logging.getLogger("kafka.test_two_handlers")
    logger.propagate = False
    seen: list[list[str]] = [[], []]
    handlers = []
    for lines in seen:
        handler = logging.Handler()
        handler.emit = lambda r, lines=lines: lines.append(r.getMessage())  # type: ignore[method-assign]
        handler.addFilter(throttle)
        logger.addHandler(handler)
        handlers.append(handler)
    try:
        for _ in range(3):
            logger.warning("Connection to %s refused", "b-0")
        clock.now += 61
        logger.warning("Connection to %s refused", "b-0")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.propagate = True
    expected = [
        "Connection to b-0 refused",
        "Connection to b-0 refused [and 2 more like this in the last 60 s]",
    ]
    assert seen == [expected, expected]


def test_a_library_line_carries_its_exception_not_a_traceback() -> None:
    """kafka-python logs a broker that went away with a traceback (kafka.net.transport, 'Error receiving
    network data'): an expected condition, the exception goes on the line."""
    throttle = RepeatThrottle(("kafka",), interval_s=60, clock=Clock())
    try:
        raise ConnectionResetError(104, "Connection reset by 100% of peers")
    except ConnectionResetError:
        line = logging.LogRecord(
            "kafka.net.transport", logging.ERROR, __file__, 1, "Error receiving %s", ("data",), sys.exc_info()
        )
    assert throttle.filter(line)
    assert line.exc_info is None
    assert line.getMessage() == (
        "Error receiving data (ConnectionResetError: [Errno 104] Connection reset by 100% of peers)"
    )
    assert "Traceback" not in logging.Formatter().format(line)
    try:
        raise OSError("disk 100% full")
    except OSError:
        bare = logging.LogRecord(
            "kafka.producer.sender", logging.ERROR, __file__, 1, "Uncaught error", None, sys.exc_info()
        )
    assert throttle.filter(bare)
    assert bare.getMessage() == "Uncaught error (OSError: disk 100% full)"  # no args: no % formatting


def test_other_templates_levels_loggers_and_other_libraries_pass() -> None:
    throttle = RepeatThrottle(("kafka",), interval_s=60, clock=Clock())
    assert throttle.filter(record("kafka.net.connection", "Connection lost: %s", "x"))
    assert throttle.filter(record("kafka.net.connection", "Connection lost: %s", "x", level=logging.ERROR))
    assert throttle.filter(record("kafka.net.manager", "Connection lost: %s", "x"))
    assert throttle.filter(record("kafka.net.connection", "Node %s not ready", 1))
    for _ in range(3):  # neither finsent's own lines nor a logger that merely starts with the same letters
        assert throttle.filter(record("finsent.runner", "flush waits for %d record(s)", 3))
        assert throttle.filter(record("kafkaesque", "same line"))
    assert throttle.filter(record("kafka", "the prefix logger itself"))
    assert not throttle.filter(record("kafka", "the prefix logger itself"))


def test_the_remembered_templates_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that formats its own messages makes every text a new template: the table does not grow
    past MAX_TEMPLATES, and what is dropped first is what passed longest ago."""
    monkeypatch.setattr(log_throttle, "MAX_TEMPLATES", 10)
    clock = Clock()
    throttle = RepeatThrottle(("kafka",), interval_s=60, clock=clock)
    for i in range(5):
        assert throttle.filter(record("kafka.cluster", f"old line {i}"))
    clock.now += 61
    for i in range(100):
        assert throttle.filter(record("kafka.cluster", f"Task {i} ran for 0.12 s"))
        assert len(throttle._seen) <= 10
    assert throttle.filter(record("kafka.cluster", "old line 0"))  # forgotten, so it passes again


@pytest.fixture
def root_handler() -> Iterator[logging.Handler]:
    handler = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_installed_once_on_the_root_handlers(root_handler: logging.Handler) -> None:
    """Also when an earlier start in the same process installed it on other handlers (the tests' CLI runs)."""
    first = throttle_library_logs(("kafka",))
    assert first in root_handler.filters
    assert throttle_library_logs(("kafka",)) is first
    assert sum(isinstance(f, RepeatThrottle) for f in root_handler.filters) == 1
    later = logging.NullHandler()
    logging.getLogger().addHandler(later)
    try:
        assert throttle_library_logs(("kafka",)) is first
        assert later.filters == [first]
    finally:
        logging.getLogger().removeHandler(later)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@pytest.mark.kafka
def test_a_consumer_whose_broker_went_down_logs_a_few_lines_not_several_a_second(own_tansu: Tansu) -> None:
    """A consumer with the workers' settings polls for 4 s after its broker stopped: kafka-python logs
    every reconnect attempt (about once a second with kafka.reconnect_backoff_max_ms, two or three lines
    each); through the throttle only the first line of each template is left."""
    everything, throttled = Collect(), Collect()
    throttled.addFilter(RepeatThrottle(("kafka",)))
    consumer = make_consumer(Settings(kafka={"bootstrap_servers": own_tansu.kafka}))
    kafka_logger = logging.getLogger("kafka")
    old_level = kafka_logger.level
    kafka_logger.setLevel(logging.WARNING)
    kafka_logger.addHandler(everything)
    kafka_logger.addHandler(throttled)
    try:
        consumer.subscribe(["nowhere"])
        consumer.poll(timeout_ms=500)
        own_tansu.server.stop()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
    finally:
        kafka_logger.removeHandler(everything)
        kafka_logger.removeHandler(throttled)
        kafka_logger.setLevel(old_level)
        consumer.close()
    assert len(everything.lines) >= 8, everything.lines  # several attempts, each logged
    templates = {line.split(":", 1)[0] for line in everything.lines}
    assert len(throttled.lines) <= len(templates), (throttled.lines, templates)
    assert len(throttled.lines) < len(everything.lines) / 2, throttled.lines


def test_quiet_libraries_keeps_client_libraries_at_their_warnings(root_handler: logging.Handler) -> None:
    """apscheduler (`finsent sources`) wrote two INFO lines per fetch ('Running job' / 'executed
    successfully'), against docs/operations.md's 'the client libraries keep their warnings only'."""
    from finsent.app import quiet_libraries

    names = ("kafka", "urllib3", "apscheduler", "elastic_transport")
    before = {name: logging.getLogger(name).level for name in names}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        quiet_libraries()
        assert {name: logging.getLogger(name).level for name in names} == {
            "kafka": logging.WARNING,
            "urllib3": logging.WARNING,
            "apscheduler": logging.WARNING,
            "elastic_transport": logging.ERROR,
        }
    finally:
        root.setLevel(level)
        for name, old in before.items():
            logging.getLogger(name).setLevel(old)
