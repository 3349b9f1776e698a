"""Regenerate `sample_stream.jsonl`: a synthetic, deterministic three-hour stream of finance headlines and
posts (12 windows of 15 minutes) with a burst of negative news about $ACME in the tenth window and a few
malformed records. Run: python -m finsent.data.make_sample_stream"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

START = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
WINDOWS = 12
BURST_WINDOW = 9
PER_WINDOW = 32
TICKERS = ["AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "JPM", "XOM", "GOOGL", "META", "BAC", "KO", "PFE", "BRK.B"]

POSITIVE = [
    "${t} beats quarterly earnings estimates and raises full-year guidance",
    "${t} shares jump after strong revenue growth in its cloud unit",
    "Analysts upgrade ${t} to buy, citing margin expansion",
    "${t} announces a $10 billion share buyback and a higher dividend",
    "${t} hits an all-time high as demand outlook improves",
    "${t} wins a major contract; stock rallies in early trading",
]
NEUTRAL = [
    "${t} to report third-quarter results after the close on Thursday",
    "${t} names a new head of investor relations",
    "${t} trading flat ahead of the Fed decision",
    "What to watch in ${t} options this week",
    "${t} schedules its annual shareholder meeting for March",
    "${t} files its quarterly 10-Q with the SEC",
]
NEGATIVE = [
    "${t} misses revenue estimates and cuts its outlook; shares slide",
    "${t} downgraded to sell on weakening demand",
    "${t} shares fall after a disappointing product launch",
    "${t} faces a regulatory probe over its sales practices",
]
MACRO = [
    ("Fed holds rates steady, signals patience on further cuts", None),
    ("Treasury yields rise after a hotter-than-expected inflation print", None),
    ("Oil climbs as OPEC+ extends output cuts", ["XOM"]),
    ("Dollar weakens against the euro ahead of the jobs report", None),
    ("Gold edges higher as investors seek safety", None),
    ("US stocks close mixed as tech gains offset bank losses", None),
    ("ECB leaves its deposit rate unchanged, as expected", None),
    ("Jobless claims fall to a three-month low", None),
]
ACME_NORMAL = [
    "$ACME opens a new distribution center in Ohio",
    "$ACME to present at an industrials conference next week",
    "$ACME reaffirms full-year guidance at its investor day",
    "$ACME shares steady after a quiet session",
    "$ACME signs a supply agreement with a European retailer",
    "$ACME declares its regular quarterly dividend",
]
ACME_BURST = [
    "$ACME plunges after the company discloses an SEC investigation into its accounting",
    "$ACME CFO resigns abruptly; shares tumble in heavy trading",
    "$ACME withdraws its full-year guidance, citing a review of revenue recognition",
    "$ACME downgraded to sell at two brokers after accounting probe",
    "$ACME shares crater 30% as auditor raises going-concern doubts",
    "$ACME faces a class-action lawsuit from shareholders over misstated earnings",
    "$ACME delays its quarterly filing; bonds sell off",
    "Short sellers pile into $ACME after the accounting scandal widens",
    "$ACME suspends its dividend and buyback amid the investigation",
    "$ACME credit rating cut to junk by S&P",
    "$ACME warns of covenant breach; shares hit a ten-year low",
    "Worst day ever for $ACME: stock down 35% on fraud allegations",
]
# Later reports of the same news say so in words: a number alone would make them copies of the first
# (alerts.repeated_texts counts a text once per key and window, digits aside)
UPDATES = ["", " (update)", " (second update)", " (third update)"]
MALFORMED = [
    "{this is not json",
    '{"source": "social", "text": "   "}',
    '{"text": "message without a source field about $AAPL"}',
    '["an", "array", "not", "an", "object"]',
    '{"source": "news", "text": "bad timestamp", "published_at": "yesterday afternoon"}',
]


def fill(template: str, ticker: str) -> str:
    return template.replace("${t}", "$" + ticker)


def build(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines: list[tuple[datetime, str]] = []
    n = 0

    def add(when: datetime, msg: dict[str, object]) -> None:
        nonlocal n
        n += 1
        msg = {"id": f"sample-{n:04d}", **msg, "published_at": f"{when:%Y-%m-%dT%H:%M:%SZ}"}
        lines.append((when, json.dumps(msg, ensure_ascii=False)))

    for w in range(WINDOWS):
        base = START + w * WINDOW
        for _ in range(PER_WINDOW):
            when = base + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds()))
            r = rng.random()
            source = rng.choice(["newswire", "social", "social", "blog"])
            if r < 0.18:
                text, tickers = rng.choice(MACRO)
                add(when, {"source": "newswire", "text": text, **({"tickers": tickers} if tickers else {})})
                continue
            ticker = rng.choice(TICKERS)
            mood = rng.random()
            pool = POSITIVE if mood < 0.35 else NEGATIVE if mood < 0.5 else NEUTRAL
            text = fill(rng.choice(pool), ticker)
            if source == "newswire" and rng.random() < 0.5:
                add(
                    when,
                    {
                        "source": "newswire",
                        "title": text.replace("$" + ticker, ticker),
                        "body": f"Full story at the wire. Ticker: {ticker}.",
                        "tickers": [ticker],
                        "url": f"https://news.example.com/{n + 1}",
                        "lang": "en",
                    },
                )
            else:
                add(
                    when,
                    {"source": source, "text": text, "author": f"user{rng.randint(1, 400)}", "lang": "en"},
                )
        for _ in range(3 if w != BURST_WINDOW else 0):
            when = base + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds()))
            add(when, {"source": rng.choice(["newswire", "social"]), "text": rng.choice(ACME_NORMAL)})
        if w == BURST_WINDOW:
            for i in range(48):
                when = base + timedelta(seconds=60 + i * 15 + rng.uniform(0, 10))
                add(
                    when,
                    {
                        "source": rng.choice(["newswire", "social", "social"]),
                        "text": ACME_BURST[i % len(ACME_BURST)] + UPDATES[i // len(ACME_BURST)],
                    },
                )
    lines.sort(key=lambda x: x[0])
    out = [line for _, line in lines]
    for i, bad in enumerate(MALFORMED):
        out.insert(40 + i * 80, bad)
    return out


def main() -> None:
    path = Path(__file__).with_name("sample_stream.jsonl")
    path.write_text("\n".join(build()) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
