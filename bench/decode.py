"""CPU per message of the consume path's decoding, before and after its enrichment changes, in one run, one
table (docs/performance.md):

1. the content hash's whitespace folding: the regex `\\s+` (before) vs `str.split` (the same whitespace);
2. the cashtag scan: the regex over every text (before) vs skipped for texts without `$`;
3. the whole `ingest.decode.decode` of a record, with both before (patched in) and as it is.
Records are the bench corpus (../shared/data, both sets in arrival order) as the pipeline receives them.
Each variant runs `--rounds` times, alternated (before first in even rounds, after first in odd ones); the
table shows the best round.

    python bench/decode.py      # about 3 s; no server
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from model import mixed_texts  # noqa: E402
from outputs import DATA, cpu_us_per_message, row  # noqa: E402

import ingest.decode  # noqa: E402
from ingest.decode import DecodeLimits, decode  # noqa: E402
from ingest.enrich import _CASHTAG, cashtags, content_hash  # noqa: E402
from ingest.message import KafkaMeta  # noqa: E402

_SPACES = re.compile(r"\s+")


def regex_content_hash(text: str) -> str:
    """Before: whitespace folded by a regex."""
    canonical = _SPACES.sub(" ", text).strip().lower()
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def scanning_cashtags(text: str) -> list[str]:
    """Before: the regex scan on every text."""
    return [m.group(1).upper() for m in _CASHTAG.finditer(text)]


@contextmanager
def decoding_as_before() -> Iterator[None]:
    with (
        mock.patch.object(ingest.decode, "content_hash", regex_content_hash),
        mock.patch.object(ingest.decode, "cashtags", scanning_cashtags),
    ):
        yield


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="texts (default 3000)")
    ap.add_argument("--rounds", type=int, default=7, help="alternated rounds per variant (default 7)")
    args = ap.parse_args()
    now = datetime.now(UTC)
    texts = list(mixed_texts(DATA, args.n))
    records = [
        json.dumps(
            {
                "id": f"m{i}",
                "source": "bench",
                "text": t,
                "published_at": (now - timedelta(seconds=i)).isoformat(),
            }
        ).encode()
        for i, t in enumerate(texts)
    ]
    metas = [KafkaMeta("in", 0, i, None) for i in range(len(records))]
    limits = DecodeLimits(max_age_s=30 * 86_400.0, max_ahead_s=86_400.0)

    def decode_all() -> list[object]:
        return [decode(r, m, limits, now) for r, m in zip(records, metas, strict=True)]

    assert [content_hash(t) for t in texts] == [regex_content_hash(t) for t in texts], "content hashes differ"
    assert [cashtags(t) for t in texts] == [scanning_cashtags(t) for t in texts], "cashtags differ"
    with decoding_as_before():
        before = decode_all()
    assert before == decode_all(), "decoding changed an output"

    variants: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "content hash: regex -> str.split": (
            lambda: [regex_content_hash(t) for t in texts],
            lambda: [content_hash(t) for t in texts],
        ),
        "cashtags: scan every text -> only texts with '$'": (
            lambda: [scanning_cashtags(t) for t in texts],
            lambda: [cashtags(t) for t in texts],
        ),
    }

    def decode_all_as_before() -> list[object]:
        with decoding_as_before():
            return decode_all()

    variants["decode of a record, whole"] = (decode_all_as_before, decode_all)
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, (old, new) in variants.items():
            for which, work in (("before", old), ("after", new))[:: 1 if r % 2 == 0 else -1]:
                results.setdefault((name, which), []).append(cpu_us_per_message(work, len(texts)))

    names = list(variants)
    width = max(len(n) for n in names)
    print(f"\n## consume-path decoding, CPU us per text ({len(texts)} texts, best of {args.rounds} rounds)\n")
    print(f"| {'measure':<{width}} | before | after | after / before |")
    print(f"|{'-' * (width + 2)}|--------|-------|----------------|")
    for name in names:
        print(row(name, min(results[(name, "before")]), min(results[(name, "after")]), width))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
