"""The Prometheus registry a worker serves: its own series plus the process's, with no `_created` series."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)


def worker_registry() -> CollectorRegistry:
    """A registry for one worker process (`finsent run`, `alerts`, `sources`, `demo`).

    The process collector gives resident memory, CPU seconds, open files and the start time: what the
    runbook's out-of-memory and restart checks read (docs/operations.md), with no cAdvisor needed. The
    `*_created` series that prometheus_client adds to every counter and histogram are read by nothing
    here and were about a third of all samples, so they are turned off (a process-wide switch, the only
    one prometheus_client offers; idempotent)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
