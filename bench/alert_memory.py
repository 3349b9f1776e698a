"""Memory and state-record size of the alert worker's detector per key kept, and what a state save costs,
for the sizing of `alerts.max_keys` (docs/alerting.md, the field's description in alerts/config.py and the
512 MiB limit of deploy/k8s/alerts.yaml): measured with the shipped `AlertSettings`, not estimated.

Keys are tickers (`ticker:ABCD`, 3 to 5 letters) with one labeled event per window each, the commonest key
of a partition of 10,000. A quiet key's resolve pool (`KeyState.recent`) grows with every window it has
messages in until it holds `min_count` (30) messages, so the state of a key depends on its history: rows
for keys in warm-up (2 windows), just past warm-up (`warmup_windows` + 2) and at steady state (`--windows`).

1. A template partition of `--template-keys` keys is filled through the worker's own path: labeled-topic
   JSON -> `parse_event` -> `Detector.add(event, labeled_at)` in polls of 2,000 records, `advance()` after
   each, and at the end `advance(t)` as the idle clock does, so every window is closed (none open).
2. The other rows are that template scaled to K keys per partition (renamed copies) and written as state
   records (`PartitionState.to_record` + `encode_state`), which a fresh process restores the way the
   worker does at an assignment (`decode_state` of every record, then `PartitionState.from_record`);
   the row filled by events checks that the restored state costs what the filled one does. After the
   save of the 1 x max_keys row, a flood of made-up cashtags fills an open window up to the new-key cap
   (`Detector.new_key_cap()`), and the partition is saved again (the flood row).
3. The save is the worker's `_persist_and_commit`: every partition's `to_record()`, then `StateStore.save`
   (`_encoded` -> `encode_state`, zlib JSON) into an in-memory stand-in for the Kafka producer.

Each row runs in a fresh process that imports what `finsent alerts` imports (RSS, sizes, save CPU; peaks
from VmHWM, reset through /proc/self/clear_refs); rows of at most `--max-keys` keys run once more under
tracemalloc (the heap columns; several times slower, so "-" in the bigger rows, where the heap per key is
that of the 1 x max_keys row: it does not depend on the count). Columns:
  heap/key     tracemalloc: Python heap the partitions hold after the restore (or the fill), per key kept
  RSS/key      the process's VmRSS after minus before the restore (or the fill), per key kept: the heap
               plus what the allocator keeps of the temporaries freed meanwhile
  save +/key   tracemalloc: peak during the save minus the heap before it, per key saved
  JSON/key     bytes of the records' JSON (what zlib compresses), per key
  zlib/key     bytes of the encoded records (what the state topic stores), per key
  save CPU     CPU milliseconds of the save (every partition's to_record + encode, cyclic GC included)
  RSS held     VmRSS just before the save, MiB (the process included: see the line above the table)
  restore pk   VmHWM during the restore: encoded records, decoded dicts and detectors at once, MiB
  save pk      VmHWM during the save, MiB
The flood row's per-key columns are per key of its open window (what the window adds to the partition).
Not included: the Kafka client's buffers (fetched labeled records, the state record until acknowledged).

    python bench/alert_memory.py      # about 100 s of CPU, 90 s on 2 idle cores; no server
    python bench/alert_memory.py --keys 200 --partitions 1 --max-keys 200 --template-keys 100 --windows 10
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerts.config import AlertSettings  # noqa: E402
from alerts.detector import ACCEPTED, KEY_CAP, Detector  # noqa: E402
from alerts.events import labeled_time, parse_event  # noqa: E402
from alerts.state_codec import decode_state, encode_state  # noqa: E402
from finsent.alert_state import StateStore  # noqa: E402
from finsent.alert_worker import PartitionState  # noqa: E402

# What `finsent alerts` imports (finsent.commands.alerting.cmd_alerts), so that RSS includes them.
WORKER_MODULES = (
    "finsent.cli",
    "finsent.app",
    "finsent.commands.pipeline",
    "finsent.health",
    "finsent.registry",
)
MIB = 1024 * 1024
POLL_RECORDS = 2000  # the worker's poll(max_records=2000)
START = 1_767_225_600  # 2026-01-01T00:00:00Z, a window boundary
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RECORD = (
    '{"event_id":"%(id)s|ticker:%(sym)s","key_type":"ticker","key":"%(sym)s","id":"%(id)s","source":"newswire",'
    '"text":"$%(sym)s shares move after the quarterly report and guidance update","url":'
    '"https://news.example.com/%(id)s","tickers":["%(sym)s"],"published_at":"%(published)s","labeled_at":'
    '"%(labeled)s","topic":"Earnings","topic_score":0.91,"sentiment":"%(sentiment)s","sentiment_score":'
    '%(score).6f,"sentiment_probs":{"negative":%(neg).6f,"neutral":%(neu).6f,"positive":0.05},'
    '"model_version":"bench"}'
)


# ---- measurements in this process ------------------------------------------------------------------
def rss() -> int:
    return _status("VmRSS")


def rss_peak() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_rss_peak() -> None:
    """VmHWM back to the current RSS (Linux 4.0+), so the next peak is the next step's alone."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def heap() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


class _Acked:
    def get(self, timeout: float | None = None) -> None:
        return None


class MemoryProducer:
    """Stands in for the state store's KafkaProducer: keeps what is sent, as the real one keeps it until
    the broker acknowledges it."""

    def __init__(self, **kwargs: Any) -> None:
        self.values: list[bytes] = []

    def send(self, topic: str, key: bytes, value: bytes) -> _Acked:
        self.values.append(value)
        return _Acked()

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def memory_store() -> tuple[StateStore, MemoryProducer]:
    with mock.patch("finsent.alert_state.KafkaProducer", MemoryProducer):
        store = StateStore({}, "finsent.alert-state", "finsent.labeled", group_id="finsent-alerts")
    assert isinstance(store.producer, MemoryProducer)
    return store, store.producer


def measure_save(parts: dict[int, PartitionState]) -> dict[str, float]:
    """The worker's save of every partition (`_persist_and_commit`): the records of all, then one send
    each. Returns the save's CPU seconds, heap rise (traced), RSS before and peak, and the sizes."""
    store, producer = memory_store()
    gc.collect()
    held = rss()
    before = heap()
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    reset_rss_peak()
    t0 = time.process_time()
    records = {p: ps.to_record() for p, ps in parts.items()}
    store.save(records)
    cpu = time.process_time() - t0
    peak = rss_peak()
    heap_peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
    del records
    zipped = sum(len(v) for v in producer.values)
    producer.values.clear()
    json_bytes = sum(len(json.dumps(ps.to_record(), separators=(",", ":"))) for ps in parts.values())
    return {
        "save_cpu_s": cpu,
        "save_heap": heap_peak - before,
        "rss_held": held,
        "save_peak": peak,
        "json": json_bytes,
        "zlib": zipped,
    }


# ---- filling a partition through the worker's path ---------------------------------------------------
def symbols(n: int, rng: random.Random, taken: set[str] | None = None) -> list[str]:
    """`n` distinct ticker symbols of 3 to 5 letters (4 most often), none in `taken`."""
    taken = set() if taken is None else taken
    out: list[str] = []
    while len(out) < n:
        sym = "".join(rng.choice(LETTERS) for _ in range(rng.choice((3, 4, 4, 5))))
        if sym not in taken:
            taken.add(sym)
            out.append(sym)
    return out


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def labeled_records(syms: list[str], windows: int, rng: random.Random) -> Iterator[bytes]:
    """One labeled event per key per window, as the pipeline writes them (finsent.labeled_events), in
    event-time order; a fifth are negative."""
    serial = 0
    for w in range(windows):
        base = START + w * 900
        for i, sym in enumerate(syms):
            serial += 1
            ts = base + (i + 0.5) * 899.0 / len(syms)
            negative = rng.random() < 0.2
            neg = rng.uniform(0.55, 0.95) if negative else rng.uniform(0.01, 0.4)
            yield (
                RECORD
                % {
                    "id": f"m{serial}",
                    "sym": sym,
                    "published": rfc3339(ts),
                    "labeled": rfc3339(ts + 1.5),
                    "sentiment": "negative" if negative else "neutral",
                    "score": max(neg, 0.6),
                    "neg": neg,
                    "neu": max(0.0, 0.95 - neg),
                }
            ).encode()


def count(detector: Detector, records: Iterator[bytes], negative_label: str) -> dict[str, int]:
    """The worker's `step` and `_count`: polls of up to 2,000 records, each parsed and added with its
    labeled_at as the arrival time, then `advance()`. Returns the outcomes."""
    outcomes: dict[str, int] = {}
    for i, value in enumerate(records, 1):
        obj = json.loads(value)
        event = parse_event(obj, negative_label)
        labeled = labeled_time(obj)
        outcome = detector.add(event, labeled)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if i % POLL_RECORDS == 0:
            detector.advance()
    detector.advance()
    return outcomes


def filled(settings: AlertSettings, syms: list[str], windows: int, seed: int) -> PartitionState:
    detector = Detector(settings)
    count(detector, labeled_records(syms, windows, random.Random(seed)), settings.negative_label)
    # the idle clock: event time moves on until the last window with events has closed
    detector.advance(START + windows * 900 + settings.allowed_lateness_s)
    assert not detector.open and len(detector.keys) == len(syms)
    return PartitionState(partition=0, detector=detector, next_offset=len(syms) * windows, dirty=False)


def flood(ps: PartitionState, tries: int, seed: int) -> dict[str, int]:
    """Posts of 50 made-up cashtags each into the window after the last closed one: the detector takes
    `new_key_cap()` of them, the rest are key_cap."""
    d = ps.detector
    assert d.next_start is not None
    rng = random.Random(seed)
    fakes = symbols(tries, rng, {key.partition(":")[2] for key in d.keys})
    now = d.next_start + 60.0

    def records() -> Iterator[bytes]:
        for i, sym in enumerate(fakes):
            post = f"flood{i // 50}"
            yield (
                RECORD
                % {
                    "id": post,
                    "sym": sym,
                    "published": rfc3339(now),
                    "labeled": rfc3339(now + 1.0),
                    "sentiment": "neutral",
                    "score": 0.6,
                    "neg": 0.2,
                    "neu": 0.75,
                }
            ).encode()

    return count(d, records(), d.settings.negative_label)


# ---- child processes ---------------------------------------------------------------------------------
def child_fill(spec: dict[str, Any]) -> dict[str, Any]:
    """The template: a partition filled through the worker's path; with `out`, also the warm-up and
    just-warmed templates, written as state records (JSON)."""
    settings = AlertSettings()
    rng = random.Random(1)
    syms = symbols(spec["keys"], rng)
    gc.collect()
    rss0, heap0 = rss(), heap()
    ps = filled(settings, syms, spec["windows"], seed=2)
    gc.collect()
    result: dict[str, Any] = {"rss_key": (rss() - rss0) / len(syms), "heap_key": (heap() - heap0) / len(syms)}
    result.update(measure_save({0: ps}))
    result["keys"] = len(syms)
    if spec.get("out"):
        out = Path(spec["out"])
        out.joinpath(f"template-{spec['windows']}.json").write_text(json.dumps(ps.to_record()))
        del ps
        for windows in spec["more_windows"]:
            more = filled(settings, syms, windows, seed=2)
            out.joinpath(f"template-{windows}.json").write_text(json.dumps(more.to_record()))
    return result


def child_restore(spec: dict[str, Any]) -> dict[str, Any]:
    """Restore encoded state records the way `AlertWorker.on_assigned` does, optionally flood one
    partition's open window, then save them all."""
    settings = AlertSettings(max_keys=spec["max_keys"])
    files = [Path(f) for f in spec["files"]]
    gc.collect()
    rss0, heap0 = rss(), heap()
    reset_rss_peak()
    values = {p: f.read_bytes() for p, f in enumerate(files)}  # what the state topic's consumer fetched
    records = {p: decode_state(v) for p, v in values.items()}  # StateStore.load decodes all of them
    del values
    parts = {p: PartitionState.from_record(settings, p, rec) for p, rec in records.items()}
    del records
    restore_peak = rss_peak()
    gc.collect()
    keys = sum(len(ps.detector.keys) for ps in parts.values())
    result: dict[str, Any] = {
        "keys": keys,
        "rss_key": (rss() - rss0) / keys,
        "heap_key": (heap() - heap0) / keys,
        "restore_peak": restore_peak,
    }
    result.update(measure_save(parts))
    if spec.get("flood"):
        # the window of a flood of made-up cashtags, between this save and the next
        gc.collect()
        rss1, heap1 = rss(), heap()
        outcomes = flood(parts[0], 2 * parts[0].detector.new_key_cap(), seed=3)
        gc.collect()
        accepted = outcomes.get(ACCEPTED, 0)
        window_keys = sum(len(accs) for accs in parts[0].detector.open.values())
        assert accepted == window_keys, (outcomes, window_keys)
        grown = {"rss_key": (rss() - rss1) / accepted, "heap_key": (heap() - heap1) / accepted}
        # traced, only the heap the window adds is wanted: its save is measured untraced
        after: dict[str, float] = {"json": 0, "zlib": 0}
        if not tracemalloc.is_tracing():
            after = measure_save(parts)
        after.update(
            grown,
            keys=accepted,
            capped=outcomes.get(KEY_CAP, 0),
            json=after["json"] - result["json"],
            zlib=after["zlib"] - result["zlib"],
        )
        result["flood"] = after
    return result


HEAP_COLUMNS = ("heap_key", "save_heap")


def run_child(spec: dict[str, Any], traced: bool) -> dict[str, Any]:
    """`spec` in a fresh process, untraced; with `traced`, beside it another under tracemalloc for the heap
    columns (several times slower; neither measures the other: RSS and CPU time are per process). Prints
    each child's CPU seconds on stderr."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    runs = {
        trace: subprocess.Popen(
            [*cmd, json.dumps({**spec, "trace": trace, "out": spec.get("out") if not trace else None})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for trace in ((False, True) if traced else (False,))
    }
    out: dict[str, Any] = {}
    for trace, child in runs.items():
        stdout, stderr = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} ... failed:\n{stderr[-3000:]}")
        result = json.loads(stdout.splitlines()[-1])
        print(f"         {'traced' if trace else 'untraced'}: {result['cpu_s']:.1f} s CPU", file=sys.stderr)
        for part, got in ((out, result), (out.setdefault("flood", {}), result.get("flood") or {})):
            part.update({k: v for k, v in got.items() if (k in HEAP_COLUMNS) == trace and k != "flood"})
    if not out["flood"]:
        del out["flood"]
    return out


def child_main(spec: dict[str, Any]) -> int:
    for module in WORKER_MODULES:  # counted in RSS, as in the worker (their own heap is not traced)
        importlib.import_module(module)
    if spec["trace"]:
        # the state holds no reference cycles, so the heap is the same without the cyclic collector, whose
        # passes over millions of objects would make this run several times slower
        gc.disable()
        tracemalloc.start()
    gc.collect()
    start = rss()
    result = child_fill(spec) if spec["mode"] == "fill" else child_restore(spec)
    result["start_rss"] = start
    result["cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    print(json.dumps(result))
    return 0


# ---- the parent: state records, rows, table ------------------------------------------------------------
def write_records(template: dict[str, Any], partitions: int, keys: int, folder: Path, tag: str) -> list[str]:
    """`partitions` encoded state records of `keys` keys each: the template's key states under new
    ticker symbols (all distinct), as `PartitionState.to_record` lays them out."""
    states = list(template["detector"]["keys"].values())
    rng = random.Random(zlib.crc32(tag.encode()))
    taken: set[str] = set()
    files: list[str] = []
    for p in range(partitions):
        syms = symbols(keys, rng, taken)
        record = json.loads(json.dumps(template))
        record["partition"] = p
        record["detector"]["keys"] = {
            f"ticker:{sym}": {**states[i % len(states)], "key": sym} for i, sym in enumerate(syms)
        }
        path = folder / f"{tag}-{p}.bin"
        path.write_bytes(encode_state(record))
        files.append(str(path))
    return files


def record_sizes(files: list[str]) -> tuple[int, int]:
    """JSON and encoded bytes of state records written by `write_records`."""
    json_bytes = zipped = 0
    for f in files:
        data = Path(f).read_bytes()
        zipped += len(data)
        json_bytes += len(json.dumps(decode_state(data), separators=(",", ":")))
    return json_bytes, zipped


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({model}), {mem:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_max = AlertSettings().max_keys
    ap.add_argument(
        "--keys",
        default="1000,10000,50000",
        help="keys per partition of the steady-state rows, comma-separated (default 1000,10000,50000; over "
        "--max-keys, that row raises max_keys to keep them)",
    )
    ap.add_argument(
        "--max-keys",
        type=int,
        default=default_max,
        help=f"keys per partition of the save, warm-up, flood rows (default alerts.max_keys: {default_max})",
    )
    ap.add_argument("--partitions", type=int, default=6, help="partitions of the save row (default 6)")
    ap.add_argument(
        "--windows",
        type=int,
        default=40,
        help="windows with messages behind a steady key (default 40: a quiet key's resolve pool is full)",
    )
    ap.add_argument(
        "--template-keys", type=int, default=500, help="keys filled through the events path (default 500)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(json.loads(args.child))

    defaults = AlertSettings()
    warmed = defaults.warmup_windows + 2
    if args.windows < warmed:
        ap.error(f"--windows must be at least {warmed} (warmup_windows + 2)")
    if args.max_keys < 100:
        ap.error("--max-keys must be at least 100 (alerts.max_keys)")
    steady_keys = [int(k) for k in args.keys.split(",") if k.strip()]
    command = shlex.join(["python", "bench/alert_memory.py", *sys.argv[1:]])
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]

    def progress(what: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {what}", file=sys.stderr, flush=True)

    rows: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="alert-memory-") as tmp:
        folder = Path(tmp)
        progress(f"filling {args.template_keys:,} keys through the worker's path")
        fill = run_child(
            {
                "mode": "fill",
                "keys": args.template_keys,
                "windows": args.windows,
                "more_windows": [2, warmed],
                "out": str(folder),
            },
            traced=True,
        )
        fill["restore_peak"] = None
        rows.append((f"steady ({args.windows} windows), filled by events", f"1 x {fill['keys']:,}", fill))
        templates = {
            w: json.loads((folder / f"template-{w}.json").read_text()) for w in (2, warmed, args.windows)
        }

        def restored(windows: int, partitions: int, keys: int, flood: bool = False) -> dict[str, Any]:
            tag = f"{windows}-{partitions}-{keys}"
            files = write_records(templates[windows], partitions, keys, folder, tag)
            spec = {"mode": "restore", "files": files, "max_keys": max(keys, args.max_keys), "flood": flood}
            result = run_child(spec, traced=partitions * keys <= args.max_keys)
            for f in files:
                Path(f).unlink()
            return result

        def raised(keys: int) -> str:
            return "" if keys <= defaults.max_keys else f", max_keys {keys:,}"

        steady = f"steady ({args.windows} windows)"
        for label, windows in (("warm-up (2 windows)", 2), (f"just warmed ({warmed} windows)", warmed)):
            progress(f"{label}: 1 x {args.max_keys:,}")
            rows.append(
                (label + raised(args.max_keys), f"1 x {args.max_keys:,}", restored(windows, 1, args.max_keys))
            )
        flooded: dict[str, Any] = {}
        for keys in sorted({*steady_keys, args.max_keys}):
            progress(f"{steady}: 1 x {keys:,}" + (" + flood window" if keys == args.max_keys else ""))
            result = restored(args.windows, 1, keys, flood=keys == args.max_keys)
            if keys in steady_keys:
                rows.append((steady + raised(keys), f"1 x {keys:,}", result))
            if keys == args.max_keys:
                flooded = result["flood"]
        shape = f"1 x {args.max_keys:,} + {flooded['keys']:,} in a window ({flooded['capped']:,} key_cap)"
        rows.append((f"{steady} + flood window", shape, flooded))
        progress(f"{steady}, the save: {args.partitions} x {args.max_keys:,}")
        result = restored(args.windows, args.partitions, args.max_keys)
        rows.append((f"{steady}, the save", f"{args.partitions} x {args.max_keys:,}", result))
    progress("done")

    print(
        f"\n## alert worker: detector memory and state record per key, and the state save\n\n"
        f"{machine()}; load average {load0:.1f} at start / {os.getloadavg()[0]:.1f} at end; shipped "
        f"AlertSettings (window_s {defaults.window_s}, warmup_windows {defaults.warmup_windows}, max_keys "
        f"{defaults.max_keys:,}); one labeled event per key per window; process with the worker's imports "
        f"{fill['start_rss'] / MIB:.0f} MiB RSS\n`{command}` ({time.monotonic() - t0:.0f} s)\n"
    )
    head = (
        "state",
        "partitions x keys",
        "heap/key B",
        "RSS/key B",
        "save +/key B",
        "JSON/key B",
        "zlib/key B",
        "save CPU ms",
        "RSS held MiB",
        "restore pk MiB",
        "save pk MiB",
    )
    table = [
        (
            label,
            shape,
            f"{r['heap_key']:,.0f}" if "heap_key" in r else "-",
            f"{r['rss_key']:,.0f}",
            "-" if "capped" in r or "save_heap" not in r else f"{r['save_heap'] / r['keys']:,.0f}",
            f"{r['json'] / r['keys']:,.0f}",
            f"{r['zlib'] / r['keys']:,.1f}",
            f"{r['save_cpu_s'] * 1000:,.1f}",
            f"{r['rss_held'] / MIB:,.0f}",
            "-" if r.get("restore_peak") is None else f"{r['restore_peak'] / MIB:,.0f}",
            f"{r['save_peak'] / MIB:,.0f}",
        )
        for label, shape, r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    print(line(head))
    print("|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    for t in table:
        print(line(t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
