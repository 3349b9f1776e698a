"""Topics with explicit partitions: create the missing ones, then wait until the cluster's metadata lists
all of their partitions, so a producer or consumer started next does not race the creation (brokers create
topics asynchronously). `ensure_output_topics` is what `finsent run` does at start-up; `ensure_topics` is
for the demo, the benches and the tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finsent.settings import Settings

log = logging.getLogger(__name__)

LABELED_TOPIC_PARTITIONS = 6
"""Partitions of a labeled topic that `finsent run` creates, as deploy/compose.yaml's kafka-init and
deploy/k8s/kafka-topics.yaml do: the most alert workers that can share the work. Choose it before the first
start: events are keyed to partitions by their alert key, so adding partitions later moves keys."""

INPUT_TOPIC_PARTITIONS_EXAMPLE = 6
"""The partitions the deploy files give the input topic (the most labelers that can share it), named in
the warning about a missing input topic."""

DEAD_LETTER_TOPIC_PARTITIONS = 1
"""Partitions of a dead-letter topic that `finsent run` creates (as the deploy files do)."""

BROKER_DEFAULT_REPLICATION = -1
"""Replication factor -1: the broker's `default.replication.factor` (CreateTopics v4+, Kafka 2.4+)."""


class TopicSetupError(Exception):
    """An output topic is missing and the broker refused to create it; the message is one line naming the
    topic, the reason and the command that creates it."""


def ensure_topics(
    client_kwargs: Mapping[str, Any], topics: Sequence[tuple[str, int]], *, timeout_s: float = 15.0
) -> None:
    """Create each (name, partitions) that does not exist yet (replication 1) and wait for its metadata;
    existing topics are left as they are. Raises TimeoutError if the metadata does not show up in time."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_kwargs)
    try:
        existing = set(admin.list_topics())
        new = {name: partitions for name, partitions in topics if name not in existing}
        if new:
            with suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, n, 1) for name, n in new.items()])
    finally:
        admin.close()
    if not new:
        return
    probe = KafkaConsumer(**client_kwargs, enable_auto_commit=False)  # no group: no auto-commit warning
    try:
        deadline = time.monotonic() + timeout_s
        waiting = new
        while True:
            waiting = {
                name: n for name, n in waiting.items() if len(probe.partitions_for_topic(name) or ()) < n
            }
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible after {timeout_s:.0f} s: {', '.join(waiting)}")
            probe.topics()  # forces a metadata refresh
            time.sleep(0.1)
    finally:
        probe.close()


def output_topics(settings: Settings) -> list[tuple[str, int, str]]:
    """(name, partitions, setting) of each topic `finsent run` writes: the labeled topic when
    `pipeline.labeled_topic_enabled`, and the dead-letter topic."""
    p = settings.pipeline
    wanted: list[tuple[str, int, str]] = []
    if p.labeled_topic_enabled:
        wanted.append((p.labeled_topic, LABELED_TOPIC_PARTITIONS, "pipeline.labeled_topic"))
    wanted.append((p.dead_letter_topic, DEAD_LETTER_TOPIC_PARTITIONS, "pipeline.dead_letter_topic"))
    return wanted


def missing_input_topics(input_topics: Sequence[str], existing: set[str]) -> list[str]:
    """The input topics not among the broker's topics, in the configured order. The labeler does not
    create them: how many partitions the input has is the producers' choice (and a misspelt name would be
    created as readily)."""
    return [name for name in input_topics if name not in existing]


def create_command(bootstrap_servers: str, topic: str, partitions: int) -> str:
    """The shell command that creates `topic` as `finsent run` would (Apache Kafka's tools)."""
    return (
        f"kafka-topics.sh --bootstrap-server {bootstrap_servers} --create --if-not-exists "
        f"--topic {topic} --partitions {partitions}"
    )


def ensure_output_topics(settings: Settings, *, timeout_s: float = 15.0) -> list[str]:
    """Create the output topics that do not exist yet, with explicit partitions (LABELED_TOPIC_PARTITIONS,
    DEAD_LETTER_TOPIC_PARTITIONS) and the broker's default replication, and wait until each has a leader
    for every partition; returns the names created. Topics that exist are left as they are.

    Done before anything consumes or produces: left to the clients, the first metadata request that names a
    topic creates it with the broker's default partitions (`num.partitions`, often 1), for good, where the
    broker creates topics on use at all; and where it does not (`auto.create.topics.enable=false`), every
    write waits a minute and fails. Raises TopicSetupError (one line, with the command that creates the
    topic) when the broker refuses the creation, e.g. without the CREATE permission; KafkaError for a
    transient failure, and kafka.errors.KafkaTimeoutError when a created topic gets no leader in time.
    Missing input topics are not created, only named in a warning (`missing_input_topics`)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name in missing_input_topics(settings.pipeline.input_topics, existing):
            log.warning(
                "input topic %s (pipeline.input_topics) does not exist: nothing is labeled from it until it "
                "is created (check the name); a broker that creates topics on use creates it at this "
                "worker's subscription with its default partitions (num.partitions), the most labelers that "
                "can ever share it: create it first, e.g. %s",
                name,
                create_command(settings.kafka.bootstrap_servers, name, INPUT_TOPIC_PARTITIONS_EXAMPLE),
            )
        for name, partitions, setting in output_topics(settings):
            if name in existing or name in created:
                continue
            try:
                result = admin.create_topics(
                    {name: {"num_partitions": partitions, "replication_factor": BROKER_DEFAULT_REPLICATION}},
                    raise_errors=False,
                )
                answer = next((t for t in result["topics"] if t["name"] == name), None)
                code = answer["error_code"] if answer else 0
                if code:
                    raise for_code(code)(answer.get("error_message") or "")  # type: ignore[union-attr]
            except TopicAlreadyExistsError:
                continue  # another labeler created it meanwhile
            except KafkaError as e:
                if e.retriable:
                    raise
                raise TopicSetupError(_refused(settings, name, partitions, setting, e)) from e
            created.append(name)
            log.warning(
                "output topic %s (%s) did not exist: created it with %d partition(s) and the broker's "
                "default replication (deploy files create it beforehand; see docs/operations.md)",
                name,
                setting,
                partitions,
            )
        admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
    return created


def _refused(settings: Settings, name: str, partitions: int, setting: str, error: Exception) -> str:
    why = " ".join(str(error).split())[:300] or type(error).__name__
    command = create_command(settings.kafka.bootstrap_servers, name, partitions)
    return (
        f"output topic {name} ({setting}) does not exist and the broker refused to create it ({why}); "
        f"create it, then start again: {command}"
    )
