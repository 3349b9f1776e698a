"""Detection power and null false-alarm rate of the spike detector on seeded synthetic streams.

Prints, per baseline negative share, the share of runs in which a +LIFT spike on a key with MESSAGES
messages per window is caught within two windows (after HISTORY normal windows), and the firing alerts
per 1,000 key-windows of a null stream (one key per baseline, all in one detector).

    python bench/alerts_power.py                       # defaults: 200 runs, 6,000 null windows per key
    python bench/alerts_power.py --runs 100 --set alpha=0.02
"""

from __future__ import annotations

import argparse
import time

from alerts.config import AlertSettings
from alerts.stats import binomial_sf
from alerts.synthetic import null_alerts, spike_caught

BASELINES = (0.05, 0.10, 0.15, 0.20, 0.30)


def power_bound(n: int, p0: float, p1: float, size: float) -> float:
    """The best catch rate of any test of `size` on n messages (randomized Neyman-Pearson, known p0).

    A detector with at most r false alerts per key-window alerts in two given windows with probability
    at most 2r, so with r = 1/1,000 no detector catches a two-window spike more often than this with
    size 0.002 on the 2 x messages of the spike."""
    for k in range(n + 1):
        tail0 = binomial_sf(k + 1, n, p0)
        if tail0 <= size:
            pmf0 = binomial_sf(k, n, p0) - tail0
            gamma = min(1.0, (size - tail0) / pmf0) if pmf0 > 0 else 0.0
            return binomial_sf(k + 1, n, p1) + gamma * (binomial_sf(k, n, p1) - binomial_sf(k + 1, n, p1))
    return 0.0


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--lift", type=float, default=0.20)
    parser.add_argument("--null-windows", type=int, default=6_000, help="null windows per key")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="alerts setting")
    args = parser.parse_args()
    changes: dict[str, object] = {"window_s": 60, "allowed_lateness_s": 0}
    for item in args.set:
        name, _, value = item.partition("=")
        changes[name] = value
    settings = AlertSettings.model_validate(changes)
    t0 = time.monotonic()
    print(f"{'baseline':>8} {'caught':>8} {'bound':>8} {'null alerts/1000 kw':>20}")
    nulls = null_alerts(settings, BASELINES, args.null_windows, messages=args.messages, seed=1)
    for b in BASELINES:
        caught = sum(
            spike_caught(settings, b, seed, history=args.history, messages=args.messages, lift=args.lift)
            for seed in range(args.runs)
        )
        rate = 1000 * nulls[b] / args.null_windows
        bound = power_bound(2 * args.messages, b, min(1.0, b + args.lift), 0.002)
        print(f"{b:>8.2f} {caught / args.runs:>8.1%} {bound:>8.1%} {rate:>20.2f}", flush=True)
    total = sum(nulls.values())
    kw = args.null_windows * len(BASELINES)
    print(f"null: {total} alerts in {kw} key-windows = {1000 * total / kw:.2f} per 1,000")
    print(
        f"({args.runs} runs per baseline, {args.history} windows of history, {args.messages} messages per "
        f"window, +{args.lift:.0%} lift; {time.monotonic() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
