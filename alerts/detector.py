"""The spike detector: pure and synchronous. Events in, alert transitions out; no I/O and no clock reads.

Per key (ticker, topic, source, all) it counts messages and negative messages in tumbling event-time
windows. A window closes once event time (the largest event time seen, but no later than the wall clock
passed to `add`, or a time passed to `advance`) is `allowed_lateness_s` past its end. At close, each key
is compared with its own history:

* share rule: the negative count of the window, and of the window with the previous one, is tested
  one-sided against the baseline share, allowing for the baseline's own estimation error (predictive
  beta-binomial); the two looks are combined by weighted Bonferroni, the p-values of all keys closing
  together are corrected for multiple testing (Bonferroni or Benjamini-Hochberg), and the excess must
  not be confidently below `min_effect`, in a window of at least `min_count` messages;
* volume rule: the negative count is tested against Poisson(usual negative count) and must be at least
  `volume_min_ratio` times the usual count and `volume_min_negative`.

The baseline is an EWMA over past windows (sum of negatives / sum of messages, so busy windows weigh
more); anomalous windows move it only slowly. A key alerts only after `warmup_windows` windows with
messages; a firing alert resolves after `resolve_windows` consecutive normal windows, where "normal" is
judged against a lower threshold (hysteresis) and on the pooled run of such windows; a resolved alert
cannot re-fire until `cooldown_windows` normal windows have passed, unless as many anomalous windows in a
row (a new, sustained spike) fire it. An episode's severity only rises, and
a rise is a transition of its own (firing, with `escalated_from`).

When the labeled events' `model_version` changes (`alerts.model_change: relearn`), every key re-enters
warm-up and its firing alerts resolve, noted: baselines learned from the old model's labels would make a
retrained model's calibration shift look like a spike on every key at once.

`snapshot()` returns all state (baselines, firing alerts, open windows with 64-bit hashes of their event
ids, the model versions seen) as a JSON-able dict; `restore()` takes it back, so restarts neither forget
baselines nor re-notify."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from alerts.alert_text import dashboard_url, floor_mark, model_change_note, noted, versus, windows_phrase
from alerts.config import AlertSettings
from alerts.events import LabeledEvent
from alerts.key_state import Baseline, KeyState, RuleState, empty_pairs, restore_keys
from alerts.model import RULE_SHARE, RULE_VOLUME, RULES, SEVERITY_RANK, Alert, Example
from alerts.stats import binomial_cdf, poisson_sf, significant
from alerts.windows import (
    REPEATED_TEXT,
    SEEN_ID,
    WindowAccumulator,
    open_events,
    restore_windows,
    window_start,
)

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
# Model versions a detector remembers (those seen most recently): a rolling update shows two, a fleet of
# CPU and GPU labelers two more; one that comes back after being forgotten is a change.
MODEL_VERSIONS_KEPT = 4
# A known model version is a change again (a rollback) when another one labeled for this long, by the
# labelers' clocks, after its last event, and its own event is as much later: the stragglers of a rolling
# update come within minutes. As long as a labeler deployment may pause before it is taken as gone
# (finsent/watermarks.py, GROUP_FORGET_AFTER_S).
MODEL_RETURN_AFTER_S = 3600.0
# Anomalous windows in a row that fire a new episode during a cooldown, whatever a shorter cooldown says:
# one high window makes two (itself, then the two-window look that holds it), which must not re-fire.
# Windows in a row, each critical on its own, that fire a new episode during a cooldown at once.
CRITICAL_REFIRE_WINDOWS = 2
REFIRE_MIN_WINDOWS = 3

ACCEPTED = "accepted"
LATE = "late"
DUPLICATE = "duplicate"
REPEATED = "repeated"  # a text counted already for this key and window, under another message id
IGNORED = "ignored"
KEY_CAP = "key_cap"


@dataclass(frozen=True, slots=True)
class WindowStat:
    """What the detector concluded about one key in one closed window (for backtests and plots)."""

    key_type: str
    key: str
    window_start: int
    window_end: int
    count: int
    negative_count: float
    negative_share: float
    baseline_share: float
    expected_negative: float
    share_p_value: float | None
    volume_p_value: float | None
    share_anomalous: bool
    volume_anomalous: bool


@dataclass
class _Test:
    """A key's evidence in the window being closed."""

    state: KeyState
    acc: WindowAccumulator
    count: float
    share: float
    baseline: float
    expected: float
    share_p: float | None = None
    single_p: float | None = None
    look_start: int = 0
    look_n: int = 0
    look_count: float = 0.0
    look_baseline: float = 0.0
    volume_p: float | None = None
    share_hit: bool = False
    volume_hit: bool = False


class Detector:
    """Windowed spike detection for the keys of one labeled-topic partition.

    Three plain counts are left for the caller to export (the detector has no metrics of its own):
    `dropped_at_restore`, the events of open windows that the last `restore()` dropped because the
    window size changed; `keys_evicted`, the keys forgotten after `key_ttl_windows` idle windows since
    this detector was created; and `model_changes`, the model changes noticed in the events'
    `model_version` since it was created (`alerts.model_change`; each is also logged once). The last two
    are monotonic and not saved in snapshots.

    An open window takes events of keys not in `keys` only up to `new_key_cap()` such keys: posts full of
    made-up cashtags could otherwise fill it without bound, since `max_keys` never forgets a key with
    events in an open window."""

    def __init__(self, settings: AlertSettings, *, trace: bool = False) -> None:
        self.settings = settings
        self.key_types = frozenset(settings.keys)
        self.keys: dict[str, KeyState] = {}
        self.open: dict[int, dict[str, WindowAccumulator]] = {}
        self.watermark: float | None = None
        self.next_start: int | None = None
        self.closed = False
        self.trace_enabled = trace
        self.trace: list[WindowStat] = []
        self.dropped_at_restore = 0
        self.keys_evicted = 0
        self.model_changes = 0
        # model version -> the latest labeling time it was seen at, the one seen last at the end
        self.model_versions: dict[str, float] = {}
        self._model_note: str | None = None  # a change whose firing alerts the next advance() resolves
        self._new_keys: dict[int, int] = {}  # per open window: its keys unknown to `keys` at first sight
        self._evict_due = False  # a window closed since the last `_evict_over_cap` pass
        self._retire_due = False  # a restored state may hold alerts of rules or key types switched off since

    # ---- input ---------------------------------------------------------------------------------------
    def add(self, event: LabeledEvent, now: float | None = None) -> str:
        """Count one event; returns accepted, late, duplicate, repeated (its text was counted for this key
        and window already, with `alerts.repeated_texts: once`; its time still moves event time on),
        ignored (key type not watched) or key_cap (a key new to the detector, past the window's
        `new_key_cap()`; its time still moves event time on). Whatever the outcome, the event's
        `model_version` is noted (`_see_model`), at `now` (its labeling time) when given."""
        if event.model_version:
            self._see_model(event.model_version, event.ts if now is None else now)
        if event.key_type not in self.key_types:
            return IGNORED
        if not math.isfinite(event.ts):
            raise ValueError(f"event time {event.ts!r} is not finite (parse_event rejects these)")
        size = self.settings.window_s
        ts = event.ts
        if now is not None and ts > now + self.settings.max_future_s:
            ts = now
        start = window_start(ts, size)
        if self.closed and self.next_start is not None and start < self.next_start:
            return LATE
        if self.watermark is not None and start + size + self.settings.allowed_lateness_s <= self.watermark:
            return LATE
        # the raw time picks the window, but event time moves on no further than the wall clock: one
        # source whose clock runs ahead (up to max_future_s) must not make the others' events late. A
        # replay of old data (ts far behind now) moves it as before.
        progress = ts if now is None else min(ts, now)
        accs = self.open.setdefault(start, {})
        acc = accs.get(event.key_id)
        if acc is None:
            new = event.key_id not in self.keys
            if new and self._new_keys.get(start, 0) >= self.new_key_cap():
                self._progress(progress)
                return KEY_CAP
            acc = accs[event.key_id] = WindowAccumulator()
            if new:
                self._new_keys[start] = self._new_keys.get(start, 0) + 1
        examples = self.settings.max_examples if self._may_fire(event.key_id, start, progress) else 0
        counted = acc.add(event, examples, texts_once=self.settings.repeated_texts == "once")
        if counted == SEEN_ID:
            return DUPLICATE
        self._progress(progress)
        return REPEATED if counted == REPEATED_TEXT else ACCEPTED

    def _see_model(self, version: str, at: float) -> None:
        """Note that `version` labeled an event at `at`; re-learn when that is a model change.

        A change is a version not among the MODEL_VERSIONS_KEPT seen last (once any was seen: the first
        version, or the first after restoring a snapshot of a release that kept none, is only recorded),
        or one back after another version labeled alone for MODEL_RETURN_AFTER_S (a rollback). During a
        rolling update old and new versions take turns for minutes: one change, not one per turn; CPU
        and GPU labelers side by side (two versions) change nothing either."""
        if not math.isfinite(at):
            return
        seen = self.model_versions
        last = seen.get(version)
        if last is not None and next(reversed(seen)) == version:  # the usual case: the same as before
            seen[version] = max(last, at)
            return
        change = bool(seen)
        if last is not None:
            latest_other = max(t for v, t in seen.items() if v != version)
            gap = MODEL_RETURN_AFTER_S
            change = latest_other - last > gap and at - last > gap
            del seen[version]
        previous = next(reversed(seen), "")
        seen[version] = at if last is None else max(last, at)
        while len(seen) > MODEL_VERSIONS_KEPT:
            del seen[next(iter(seen))]
        if change:
            self._model_changed(version, previous)

    def _model_changed(self, version: str, previous: str) -> None:
        """The events come from another model: with `model_change: relearn`, every key re-enters warm-up
        (`KeyState.relearn`), and its firing alerts resolve at the next `advance()`, noted. Left firing,
        they would be judged against baselines of the old model's labels until those were re-learned,
        then resolve as "back to normal" on what is only a new calibration; the note tells analysts why
        they ended, and a spike that goes on fires again once the key is out of warm-up."""
        self.model_changes += 1
        keys = len(self.keys)
        if self.settings.model_change == "keep":
            log.info(
                "labeled events now come from model %s (before: %s); %d keys keep their baselines "
                "(alerts.model_change: keep)",
                version,
                previous or "unknown",
                keys,
            )
            return
        firing = 0
        for state in self.keys.values():
            firing += sum(rs.alert is not None for rs in state.rules.values())
            state.relearn()
        if firing:
            self._model_note = version
        log.warning(
            "labeled events now come from model %s (before: %s): %d keys re-learn their baselines, no "
            "alert from them for %d windows with messages; %d firing alerts resolved "
            "(alerts.model_change: relearn)",
            version,
            previous or "unknown",
            keys,
            self.settings.warmup_windows,
            firing,
        )

    def _resolve_at_model_change(self) -> list[Alert]:
        """The firing alerts of keys that re-entered warm-up at a model change, resolved with the reason."""
        version, self._model_note = self._model_note, None
        assert version is not None
        reason = model_change_note(version)
        return [
            self._retire(rs, reason)
            for state in self.keys.values()
            for rs in state.rules.values()
            if rs.alert is not None
        ]

    def _progress(self, progress: float) -> None:
        self.watermark = progress if self.watermark is None else max(self.watermark, progress)
        if not self.closed:
            self.next_start = min(self.open)

    def new_key_cap(self) -> int:
        """Most keys unknown to `keys` that one open window takes: a tenth of `max_keys` (at least 100), or
        the room left under `max_keys` when that is more, so a fresh start (or a replay from the earliest
        offset) counts all of a real stream's keys at once while a flood adds at most a tenth per window
        (their state is small: no example texts during warm-up, see `_may_fire`)."""
        cap = self.settings.max_keys
        return max(cap // 10, 100, cap - len(self.keys))

    def _may_fire(self, key_id: str, start: int, progress: float) -> bool:
        """Whether the key may alert when window `start` closes, so that example texts are worth keeping
        (a flood of made-up cashtags is all warm-up keys: without this, each kept ~1 KB of text).

        `_close` tests a key only when its `windows_seen` reaches `warmup_windows` before this window
        counts: the window that completes warm-up cannot alert, the next one can. Every earlier window
        that may still take events may add one to `windows_seen` before then, so each counts as if it
        held the key (an upper bound: an alert never lacks its examples)."""
        state = self.keys.get(key_id)
        seen = state.windows_seen if state is not None else 0
        if seen >= self.settings.warmup_windows:
            return True
        size = self.settings.window_s
        if self.closed and self.next_start is not None:
            first = self.next_start
        else:  # before the first close: any window open, or not yet late by the watermark this event leaves
            mark = progress if self.watermark is None else max(self.watermark, progress)
            first = min(window_start(mark - self.settings.allowed_lateness_s - size, size), min(self.open))
        return seen + max(0, (start - first) // size) >= self.settings.warmup_windows

    def add_many(self, events: Iterable[LabeledEvent], now: float | None = None) -> list[str]:
        return [self.add(e, now) for e in events]

    # ---- closing windows -----------------------------------------------------------------------------
    def advance(self, to: float | None = None) -> list[Alert]:
        """Close every window whose end + allowed lateness is at or before max(watermark, `to`).

        Returns the alerts that started firing, escalated (`Alert.escalation`) or resolved, in window
        order. Window arithmetic is done in integers, and every pass closes at least one window, so any
        finite time ends the loop."""
        if to is not None:
            if not math.isfinite(to):
                raise ValueError(f"advance to {to!r}: not a finite time")
            self.watermark = to if self.watermark is None else max(self.watermark, to)
        out: list[Alert] = self._retire_disabled() if self._retire_due else []
        if self._model_note is not None:
            out.extend(self._resolve_at_model_change())
        if self.watermark is None or self.next_start is None:
            return out
        size, lateness = self.settings.window_s, self.settings.allowed_lateness_s
        while self.next_start + size + lateness <= self.watermark:
            self.closed = True
            start = self.next_start
            self._evict_due = True
            if start in self.open:
                self._new_keys.pop(start, None)
                out.extend(self._close(start, self.open.pop(start)))
                self.next_start = start + size
                continue
            # a run of windows with no data at all: close them in one step (in integers: float rounding
            # of a far-away watermark could otherwise give 0 and loop forever)
            closable = (math.floor(self.watermark) - lateness - start) // size
            upcoming = [s for s in self.open if s > start]
            if upcoming:
                closable = min(closable, (min(upcoming) - start) // size)
            closable = max(1, closable)
            out.extend(self._close_empty_run(start, closable))
            self.next_start = start + closable * size
        if self._evict_due:
            self._evict_over_cap()
        return out

    def _evict_over_cap(self) -> None:
        """Forget keys while more than `max_keys` are kept: first those still in warm-up (a flood of
        made-up cashtags is that), then established ones; in each, those seen longest ago. Never a firing
        key, nor one with events in a window still open (its `last_seen` moves only when that window
        closes: evicted, its spike would be judged without a baseline).

        Only after a window closed (keys are added only then) or a restore: the pass sorts all keys, and
        while the keys it may not forget exceed `max_keys` it would find the same at every `advance()`."""
        self._evict_due = False
        over = len(self.keys) - self.settings.max_keys
        if over <= 0:
            return
        warmup = self.settings.warmup_windows
        in_open = {key_id for accs in self.open.values() for key_id in accs}
        idle = sorted(
            (state.windows_seen >= warmup, state.last_seen, key_id)
            for key_id, state in self.keys.items()
            if not state.firing() and key_id not in in_open
        )
        for _, _, key_id in idle[:over]:
            del self.keys[key_id]
        self.keys_evicted += min(over, len(idle))

    def _close(self, start: int, accs: dict[str, WindowAccumulator]) -> list[Alert]:
        s = self.settings
        end = start + s.window_s
        tests: list[_Test] = []
        for key_id, acc in accs.items():
            state = self.keys.get(key_id)
            if state is None:
                key_type, _, key = key_id.partition(":")
                state = self.keys[key_id] = KeyState(key_type=key_type, key=key)
            count = acc.neg_w if s.confidence_weighted else float(acc.neg)
            baseline = state.baseline_share(s.min_baseline_share)
            share = count / acc.n if acc.n else 0.0
            expected = state.ewma_neg
            test = _Test(state, acc, count, share, baseline, expected)
            warmed = state.windows_seen >= s.warmup_windows
            test.look_start, test.look_n, test.look_count = start, acc.n, count
            test.look_baseline = baseline
            if warmed and acc.n >= s.min_count:
                self._share_test(test, start)
            if warmed and s.volume_rule and count >= s.volume_min_negative:
                test.volume_p = poisson_sf(count, max(expected, 1e-9))
            tests.append(test)
        self._decide(tests)
        out: list[Alert] = []
        for t in tests:
            out.extend(self._apply(t, start, end))
            if self.trace_enabled:
                self.trace.append(self._stat(t, start, end))
        for key_id, state in list(self.keys.items()):
            if key_id not in accs:
                out.extend(self._empty(state, start, 1))
        return out

    def _share_test(self, t: _Test, start: int) -> None:
        """Two looks at the share: this window alone, and this window with the previous one.

        Each look's p-value is the predictive tail of its negative count (`Baseline.tail`); the pair
        is tested against the baseline as it was before the pair began, so a first spike window that
        already leaked into the EWMA does not hide the second. The looks are combined by weighted
        Bonferroni (`pair_weight` of the level goes to the pair): the pair carries twice the messages
        and catches a spike in its second window, the single look catches an obvious one at once."""
        s = self.settings
        state = t.state
        floor = s.min_baseline_share
        single = state.baseline().tail(t.count, t.acc.n, floor)
        t.single_p = single
        p = single
        before = Baseline(*state.prev_base)
        if state.last_seen == start - s.window_s and state.prev_n > 0 and before.n > 0 and s.pair_weight > 0:
            n2, c2 = t.acc.n + state.prev_n, t.count + state.prev_count
            pair = before.tail(c2, n2, floor)
            adjusted_single = single / (1.0 - s.pair_weight) if s.pair_weight < 1 else 1.0
            adjusted_pair = pair / s.pair_weight
            if adjusted_pair < adjusted_single:
                t.look_start, t.look_n, t.look_count = start - s.window_s, n2, c2
                t.look_baseline = before.share(floor)
            p = min(1.0, adjusted_single, adjusted_pair)
        t.share_p = p

    def _large_enough(self, count: float, n: int, baseline: float) -> bool:
        """The excess is not confidently below `min_effect`: P(X <= count | share = baseline +
        min_effect) > `min_effect_p`. A point estimate would block half of all true +min_effect
        spikes and many bigger ones in small windows; this blocks what is clearly small, e.g. a
        +3 point shift that is significant only because a window holds thousands of messages."""
        s = self.settings
        target = min(1.0, baseline + s.min_effect)
        return binomial_cdf(count, n, target) > s.min_effect_p

    def _decide(self, tests: list[_Test]) -> None:
        s = self.settings
        share_tests = [t for t in tests if t.share_p is not None]
        hits = significant([t.share_p or 1.0 for t in share_tests], s.alpha, s.correction, s.min_family_size)
        for t, hit in zip(share_tests, hits, strict=True):
            # the look must show a large enough excess, and so must the current window by itself (a
            # pair look must not fire on the strength of the previous window alone)
            t.share_hit = (
                hit
                and t.share > t.baseline
                and self._large_enough(t.look_count, t.look_n, t.look_baseline)
                and self._large_enough(t.count, t.acc.n, t.baseline)
            )
        volume_tests = [t for t in tests if t.volume_p is not None]
        hits = significant(
            [t.volume_p or 1.0 for t in volume_tests], s.alpha, s.correction, s.min_family_size
        )
        for t, hit in zip(volume_tests, hits, strict=True):
            # whether a share alert explains it is known only once the share rule has stepped (`_apply`)
            t.volume_hit = hit and t.count >= s.volume_min_ratio * t.expected

    def _apply(self, t: _Test, start: int, end: int) -> list[Alert]:
        s = self.settings
        state, acc = t.state, t.acc
        h = s.resolve_effect_ratio
        share_normal = self._share_normal(t)
        volume_threshold = max(t.expected * (1 + (s.volume_min_ratio - 1) * h), s.volume_min_negative * h)
        volume_normal = t.count < volume_threshold
        share_rule = state.rule(RULE_SHARE)
        explained = share_rule.alert is not None
        share = self._step(state, RULE_SHARE, t.share_hit, share_normal, t, start, end)
        # one alert per key and episode: a share alert that fires or is firing explains a rise in
        # negatives; a share hit that its cooldown keeps from firing does not
        t.volume_hit = t.volume_hit and not (explained or share_rule.alert is not None)
        volume = None
        if s.volume_rule:
            volume = self._step(state, RULE_VOLUME, t.volume_hit, volume_normal, t, start, end)
        if share is not None and share.status == "resolved":
            self._cool_volume(state)
        out = [alert for alert in (share, volume) if alert is not None]
        anomalous = t.share_hit or t.volume_hit or self._suspicious(t) or state.firing()
        # a running mean while history is short (an EWMA started from one window is mostly noise)
        a = s.anomalous_ewma_alpha if anomalous else max(s.ewma_alpha, 1.0 / (state.windows_seen + 1))
        state.prev_base = (state.ewma_n, state.ewma_neg, state.ewma_w2n)
        state.ewma_n = (1 - a) * state.ewma_n + a * acc.n
        state.ewma_neg = (1 - a) * state.ewma_neg + a * t.count
        state.ewma_w2n = (1 - a) ** 2 * state.ewma_w2n + a * a * acc.n
        state.windows_seen += 1
        state.last_seen = start
        state.prev_n, state.prev_count = acc.n, t.count
        return out

    def _share_normal(self, t: _Test) -> bool | None:
        """Whether this window counts towards resolving a share alert; None: no evidence either way.

        "Normal" means this window is under the lower bar (hysteresis) and the run of such windows it
        ends, pooled, is confidently under the firing bar (the mirror image of `_large_enough`), so a
        level that hovers around the threshold cannot pass for normal on a few lucky windows and fire
        again a little later. The pool holds the last `resolve_windows` windows, or more until it holds
        `min_count` messages. A small window (under `min_count`) can confirm "normal" but not deny it:
        it joins the pool even when its own share is high (one negative in six messages is 17%) and is
        judged on the pool, so a quiet key resolves once its pooled messages say so."""
        s = self.settings
        h = s.resolve_effect_ratio
        small = t.acc.n < s.min_count
        low = t.share - t.baseline < h * s.min_effect
        if low or small:
            pool = t.state.recent
            pool.extend((t.acc.n, t.count))
            while len(pool) // 2 > s.resolve_windows and sum(pool[2::2]) >= s.min_count:
                del pool[:2]
        else:
            pool = t.state.recent = empty_pairs()
        pooled_n = int(sum(pool[0::2]))
        pooled_count = sum(pool[1::2])
        if small and pooled_n:
            low = pooled_count / pooled_n - t.baseline < h * s.min_effect
        low = low and (pooled_n == 0 or not self._large_enough(pooled_count, pooled_n, t.baseline))
        return low if low or not small else None

    def _suspicious(self, t: _Test) -> bool:
        """A window clearly anomalous on its own (not yet significant after correction): it must not
        drag the baseline up before the next window can confirm the spike.

        Never during warm-up (`windows_seen < warmup_windows`). The baseline is then the floor (no
        history) or a running mean of a few windows, too rough to call a window suspicious: an ordinary
        first window looks like a spike against the 2% floor, and down-weighting whichever warm-up
        windows happen to be high biases the usual counts and share low, which later raises false
        alarms. The key cannot alert during warm-up anyway, so the running mean takes every window at
        full weight, as an unbiased start."""
        s = self.settings
        if (
            t.state.windows_seen < s.warmup_windows
            or t.share - t.baseline < s.resolve_effect_ratio * s.min_effect
        ):
            return False
        single_p = t.single_p
        if single_p is None:
            single_p = t.state.baseline().tail(t.count, t.acc.n, s.min_baseline_share) if t.acc.n else 1.0
        return single_p < s.suspicious_p

    def _step(
        self, state: KeyState, rule: str, hit: bool, normal: bool | None, t: _Test, start: int, end: int
    ) -> Alert | None:
        """One window of one rule's lifecycle: maybe fire, maybe resolve."""
        rs = state.rule(rule)
        if rs.alert is not None:
            if hit:
                rs.break_normal_run()
                latest = self._alert(rule, t, start, end, starts_at=rs.alert.starts_at)
                previous, rs.alert = rs.alert, sticky_severity(latest, rs.alert)
                if higher(rs.alert.severity, previous.severity):
                    return replace(rs.alert, escalated_from=previous.severity)
            elif normal:
                rs.normal_streak += 1
                if rs.normal_streak >= self.settings.resolve_windows:
                    return self._resolve(rs, end)
            elif normal is False:
                rs.break_normal_run()  # "consecutive" normal windows
            return None
        if rs.cooldown > 0:
            return self._cooling(rs, rule, hit, normal, t, start, end)
        if hit:
            return self._fire(rs, rule, t, start, end, starts_at=float(start))
        return None

    def _cooling(
        self, rs: RuleState, rule: str, hit: bool, normal: bool | None, t: _Test, start: int, end: int
    ) -> Alert | None:
        """One window of a resolved rule's cooldown. Normal windows count it down: data still hovering
        near the threshold after a resolve belongs to the same episode and must not fire it again. But
        `cooldown_windows` anomalous windows in a row (at least three: one high window, seen alone and
        then in the two-window look, is what it holds back) are a new, sustained spike: it fires
        (starting at the first of them) instead of waiting, unnotified, for a normal window that comes
        only after it. Sooner, CRITICAL_REFIRE_WINDOWS windows in a row each critical on its own (not
        through the two-window look) fire too: 80 % negative against a 10 % baseline, twice, is a
        second leg, not data hovering near the threshold (which alternates, and is held back)."""
        if not hit:
            rs.break_hit_run()
            if normal:
                rs.cooldown -= 1
            return None
        rs.hit_streak += 1
        rs.critical_streak = rs.critical_streak + 1 if self._critical_alone(rule, t) else 0
        if rs.critical_streak >= CRITICAL_REFIRE_WINDOWS:
            run = rs.critical_streak
        elif rs.hit_streak >= max(REFIRE_MIN_WINDOWS, self.settings.cooldown_windows):
            run = rs.hit_streak
        else:
            return None
        first = start - (run - 1) * self.settings.window_s  # the episode starts with the run
        return self._fire(rs, rule, t, start, end, starts_at=float(first))

    def _fire(self, rs: RuleState, rule: str, t: _Test, start: int, end: int, starts_at: float) -> Alert:
        rs.alert = self._alert(rule, t, start, end, starts_at=starts_at)
        rs.cooldown = 0
        rs.break_normal_run()
        rs.break_hit_run()
        return rs.alert

    def _cool_volume(self, state: KeyState) -> None:
        """After a share episode resolves, its key's volume rule waits out the same cooldown: the share
        alert explained the rise in negatives while it fired, and data hovering near the threshold
        after the resolve belongs to that episode for both rules."""
        share, volume = state.rules.get(RULE_SHARE), state.rules.get(RULE_VOLUME)
        if share is not None and volume is not None and volume.alert is None:
            volume.cooldown = max(volume.cooldown, share.cooldown)

    def _resolve(self, rs: RuleState, ends_at: float) -> Alert:
        assert rs.alert is not None
        done = rs.alert.resolved(ends_at)
        rs.alert = None
        rs.break_normal_run()
        rs.break_hit_run()
        rs.cooldown = self.settings.cooldown_windows
        return done

    def _enabled(self, rule: str) -> bool:
        """Whether this detector runs `rule`: the share rule always, the volume rule unless switched
        off; a rule of another version (in a restored state) never."""
        return rule == RULE_SHARE or (rule == RULE_VOLUME and self.settings.volume_rule)

    def _retire_disabled(self) -> list[Alert]:
        """Resolve the restored alerts of rules switched off now, and of key types no longer watched
        (dropped from `keys`). Nothing else would: a rule that does not run never sees a normal window, so
        its alert would fire forever, keep its key's baseline on the slow anomalous weight and keep the
        key from being forgotten; an unwatched key type's events are ignored, so its alert would be
        re-sent and then resolved as "back to normal" on nothing measured. An unwatched key type's keys
        and open windows are forgotten, so the next snapshot no longer holds them."""
        self._retire_due = False
        out: list[Alert] = []
        for key_id, state in list(self.keys.items()):
            watched = state.key_type in self.key_types
            for rule, rs in state.rules.items():
                if rs.alert is None:
                    continue
                if not watched:
                    out.append(self._retire(rs, f"key type {state.key_type} is no longer watched"))
                elif not self._enabled(rule):
                    out.append(self._retire(rs, f"rule {rule} is switched off"))
            if not watched:
                del self.keys[key_id]
        for accs in self.open.values():
            for key_id in [k for k in accs if k.partition(":")[0] not in self.key_types]:
                del accs[key_id]
        self._count_new_keys()
        return out

    def _count_new_keys(self) -> None:
        """The keys of each open window that `keys` does not know (after a restore: a close since their
        first event may have added some, which then no longer count against `new_key_cap()`)."""
        self._new_keys = {
            start: sum(key_id not in self.keys for key_id in accs) for start, accs in self.open.items()
        }

    def _retire(self, rs: RuleState, reason: str) -> Alert:
        """A normal resolve (notified, indexed) at the event time reached, saying why in its summary."""
        assert rs.alert is not None
        ends_at = max(rs.alert.window_end, float(self.next_start if self.next_start is not None else 0))
        done = self._resolve(rs, ends_at)
        rs.cooldown = 0
        return noted(done, reason)

    def _resolve_silent(self, state: KeyState, rs: RuleState, start: int, needed: int) -> Alert:
        """A resolve completed by windows without any message for the key, whose summary says so: nothing
        was measured in them, so notifications must not call the key "back to normal". The streak that
        resolves counts empty windows as normal too: those of this run, and those before it in the streak
        (`quiet_streak`), however they alternate with windows that had messages."""
        size, windows = self.settings.window_s, self.settings.resolve_windows
        ends_at = start + needed * size
        empty = min(windows, rs.quiet_streak + needed)
        done = self._resolve(rs, float(ends_at))
        quiet = f"no messages for {windows_phrase(empty)}"
        normal = windows - empty
        return noted(done, f"{windows_phrase(normal, 'normal ')} and {quiet}" if normal else quiet)

    def _close_empty_run(self, start: int, k: int) -> list[Alert]:
        out: list[Alert] = []
        for state in list(self.keys.values()):
            out.extend(self._empty(state, start, k))
        return out

    def _empty(self, state: KeyState, start: int, k: int) -> list[Alert]:
        """`k` windows from `start` with no message for this key: count as normal, maybe forget.

        The baseline is left as it was. Decaying it towards 0 would make the usual negative count of a
        key that pauses (nights, weekends) tiny, and its first ordinary window after the pause a
        "volume spike"; the share and its precision do not change with a pause either."""
        s = self.settings
        size = s.window_s
        out: list[Alert] = []
        for rs in state.rules.values():
            rs.break_hit_run()  # windows "in a row" during a cooldown
            if rs.alert is not None:
                needed = s.resolve_windows - rs.normal_streak
                if k >= needed:
                    out.append(self._resolve_silent(state, rs, start, needed))
                    rs.cooldown = max(0, rs.cooldown - (k - needed))
                else:
                    rs.normal_streak += k
                    rs.quiet_streak += k
            else:
                rs.cooldown = max(0, rs.cooldown - k)
        if any(a.rule == RULE_SHARE for a in out):
            self._cool_volume(state)
        last_closed = start + (k - 1) * size
        idle = (last_closed - state.last_seen) // size >= s.key_ttl_windows
        key_id = f"{state.key_type}:{state.key}"
        if idle and not state.firing() and key_id in self.keys:
            del self.keys[key_id]
            self.keys_evicted += 1
        return out

    def _alert(self, rule: str, t: _Test, start: int, end: int, starts_at: float) -> Alert:
        key_type, key = t.state.key_type, t.state.key
        w_start, n, count, baseline = start, t.acc.n, t.count, t.baseline
        if rule == RULE_SHARE:
            w_start, n, count, baseline = t.look_start, t.look_n, t.look_count, t.look_baseline
            p = t.share_p if t.share_p is not None else 1.0
            summary = (
                f"Negative share for {key_type} {key} is {versus(count, n, baseline)} "
                f"({self._floor(baseline)}{count:g} of {n} messages, p={p:.2g})"
            )
        else:
            p = t.volume_p if t.volume_p is not None else 1.0
            # the total and the share too: a volume alert may mean more coverage, not more negativity
            summary = (
                f"{t.count:g} negative messages for {key_type} {key} vs usual {t.expected:.1f} per window, "
                f"in {n} messages vs usual {t.state.ewma_n:.1f}: share {versus(count, n, baseline)} "
                f"({self._floor(baseline)}p={p:.2g})"
            )
        return Alert(
            rule=rule,
            key_type=key_type,
            key=key,
            status="firing",
            severity=self._severity(rule, t),
            starts_at=starts_at,
            ends_at=None,
            window_start=float(w_start),
            window_end=float(end),
            count=n,
            negative_count=round(count, 4),
            negative_share=round(count / n if n else 0.0, 4),
            baseline_share=round(baseline, 4),
            expected_negative=round(t.expected, 4),
            p_value=p,
            summary=summary,
            dashboard_url=self._dashboard(rule, key_type, key, starts_at, end),
            examples=tuple(Example(text, url, round(prob, 4)) for prob, text, url in t.acc.examples),
        )

    def _severity(self, rule: str, t: _Test) -> str:
        """Critical when the share rule's look is `critical_effect` above its baseline; for the volume
        rule, `volume_critical_ratio` times the usual negatives and the share also above its baseline
        (by half of `min_effect`, as the resolve's hysteresis): a busy day at the usual share, which
        the volume rule also reports, is more coverage, not a crisis to page on."""
        s = self.settings
        if rule == RULE_SHARE:
            share = t.look_count / t.look_n if t.look_n else 0.0
            return "critical" if share - t.look_baseline >= s.critical_effect else "warning"
        negative = t.share - t.baseline >= s.min_effect * s.resolve_effect_ratio
        return "critical" if t.count >= s.volume_critical_ratio * t.expected and negative else "warning"

    def _critical_alone(self, rule: str, t: _Test) -> bool:
        """Whether this window by itself is of critical severity (the share rule's own window, not the
        two-window look that a single high window also makes anomalous in the window after it)."""
        s = self.settings
        if rule == RULE_SHARE:
            return t.share - t.baseline >= s.critical_effect
        return self._severity(rule, t) == "critical"

    def _floor(self, baseline: float) -> str:
        return floor_mark(baseline, self.settings.min_baseline_share)

    def _dashboard(self, rule: str, key_type: str, key: str, start: float, end: float) -> str:
        s = self.settings
        return dashboard_url(s.dashboard_url_template, s.window_s, rule, key_type, key, start, end)

    @staticmethod
    def _stat(t: _Test, start: int, end: int) -> WindowStat:
        return WindowStat(
            key_type=t.state.key_type,
            key=t.state.key,
            window_start=start,
            window_end=end,
            count=t.acc.n,
            negative_count=t.count,
            negative_share=t.share,
            baseline_share=t.baseline,
            expected_negative=t.expected,
            share_p_value=t.share_p,
            volume_p_value=t.volume_p,
            share_anomalous=t.share_hit,
            volume_anomalous=t.volume_hit,
        )

    # ---- queries -------------------------------------------------------------------------------------
    def firing(self) -> list[Alert]:
        """Alerts firing now (re-sent to Alertmanager while they last); not those of a rule switched
        off or of a key type no longer watched, which the next `advance()` resolves."""
        return [
            rs.alert
            for state in self.keys.values()
            if state.key_type in self.key_types
            for name in RULES
            if self._enabled(name) and (rs := state.rules.get(name)) is not None and rs.alert is not None
        ]

    # ---- state ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """All state as plain JSON-able values."""
        return {
            "version": SNAPSHOT_VERSION,
            "window_s": self.settings.window_s,
            "watermark": self.watermark,
            "next_start": self.next_start,
            "closed": self.closed,
            # optional (a release before them restores without, and reads them as not there)
            "model_versions": [[version, at] for version, at in self.model_versions.items()],
            "model_change_resolve": self._model_note,
            "keys": {key_id: state.to_dict() for key_id, state in self.keys.items()},
            "open": {
                str(start): {key_id: acc.to_dict() for key_id, acc in accs.items()}
                for start, accs in self.open.items()
            },
        }

    def restore(self, snap: dict[str, Any]) -> list[str]:
        """Replace all state by a snapshot; returns warnings (the window size changed, a key or an alert
        this version cannot read was dropped). One unusable entry costs only itself, not the partition."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported detector snapshot version {snap.get('version')!r}")
        warnings: list[str] = []
        self.keys = restore_keys(snap.get("keys") or {}, warnings)
        self._retire_due = True
        self._evict_due = True  # a state saved with a higher max_keys (or before the cap) may be over it
        self.dropped_at_restore = 0
        self.model_versions = restore_model_versions(snap.get("model_versions"))
        note = snap.get("model_change_resolve")
        self._model_note = note if isinstance(note, str) else None
        watermark = snap.get("watermark")
        self.watermark = float(watermark) if watermark is not None else None
        old_size = int(snap.get("window_s", 0))
        if old_size == self.settings.window_s:
            self.open = {
                int(start): restore_windows(start, accs, warnings)
                for start, accs in (snap.get("open") or {}).items()
            }
            nxt = snap.get("next_start")
            self.next_start = int(nxt) if nxt is not None else None
            self.closed = bool(snap.get("closed", False))
            self._count_new_keys()
            return warnings
        if old_size > 0:
            for state in self.keys.values():
                state.rescale(self.settings.window_s / old_size)
        self.dropped_at_restore = open_events(snap.get("open") or {})
        warnings.append(
            f"window size changed from {snap.get('window_s')}s to {self.settings.window_s}s: "
            f"open windows dropped ({self.dropped_at_restore} events not counted), firing alerts kept, "
            "baselines "
            + ("rescaled to the new size" if old_size > 0 else "kept as they were (old size unknown)")
        )
        self.open = {}
        self._new_keys = {}
        self.next_start = (
            window_start(self.watermark, self.settings.window_s) if self.watermark is not None else None
        )
        self.closed = self.next_start is not None
        return warnings


def restore_model_versions(raw: Any) -> dict[str, float]:
    """The model versions of a snapshot, as far as readable: none (a release before them), or a garbled
    entry, is not a change; the first version seen then is recorded as the one the baselines are of."""
    versions: dict[str, float] = {}
    for item in raw if isinstance(raw, list) else ():
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and item[0]
            and isinstance(item[1], int | float)
            and not isinstance(item[1], bool)
            and math.isfinite(item[1])
        ):
            versions.pop(item[0], None)
            versions[item[0]] = float(item[1])
    while len(versions) > MODEL_VERSIONS_KEPT:
        del versions[next(iter(versions))]
    return versions


def higher(severity: str, than: str) -> bool:
    """Whether `severity` ranks above `than` (one this version does not know ranks lowest)."""
    return SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(than, 0)


def sticky_severity(latest: Alert, previous: Alert) -> Alert:
    """`latest` (the evidence of this window) at the higher severity of the two. Severity is a label in
    Alertmanager, so an episode re-sent or resolved with another severity would be another alert there,
    routed elsewhere, and the first one would linger until its endsAt: once critical, an episode stays so.
    A rise is a transition of its own (`Alert.escalated_from`), notified like a firing one; the
    Alertmanager notifier resolves the alert of the lower severity with it."""
    if higher(previous.severity, latest.severity):
        return replace(latest, severity=previous.severity)
    return latest
