"""Tail probabilities against exact sums, and the multiple-testing corrections."""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.model import Alert, rfc3339
from alerts.state_codec import MAGIC, SnapshotDecodeError, decode_state, encode_state
from alerts.stats import beta_binomial_sf, binomial_cdf, binomial_sf, poisson_sf, significant


def exact_binomial_sf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def exact_poisson_sf(k: int, mu: float) -> float:
    return 1.0 - sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(k))


@given(
    n=st.integers(min_value=1, max_value=300),
    frac=st.floats(min_value=0, max_value=1),
    p=st.floats(min_value=0.001, max_value=0.999),
)
def test_binomial_tail_matches_the_exact_sum(n: int, frac: float, p: float) -> None:
    k = round(frac * n)
    exact = exact_binomial_sf(k, n, p)
    got = binomial_sf(k, n, p)
    assert math.isclose(got, exact, rel_tol=1e-7, abs_tol=1e-12)


def exact_beta_binomial_sf(k: int, n: int, a: float, b: float) -> float:
    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return sum(
        math.comb(n, i) * math.exp(log_beta(i + a, n - i + b) - log_beta(a, b)) for i in range(k, n + 1)
    )


@given(
    n=st.integers(min_value=1, max_value=300),
    frac=st.floats(min_value=0, max_value=1),
    a=st.floats(min_value=0.5, max_value=400),
    b=st.floats(min_value=0.5, max_value=2000),
)
def test_beta_binomial_tail_matches_the_exact_sum(n: int, frac: float, a: float, b: float) -> None:
    k = round(frac * n)
    exact = exact_beta_binomial_sf(k, n, a, b)
    assert math.isclose(beta_binomial_sf(k, n, a, b), min(1.0, exact), rel_tol=1e-6, abs_tol=1e-12)


def test_beta_binomial_tail_is_wider_than_the_binomial_and_interpolates_fractions() -> None:
    # a baseline worth 1,000 messages at 15%: the predictive tail is heavier than the plug-in one
    plug_in = binomial_sf(30, 100, 0.15)
    predictive = beta_binomial_sf(30, 100, 150.5, 850.5)
    assert plug_in < predictive < 3 * plug_in
    # it approaches the binomial as the history grows
    assert math.isclose(beta_binomial_sf(30, 100, 150_000.5, 850_000.5), plug_in, rel_tol=1e-2)
    # fractional counts (confidence weighting) fall between their integer neighbours
    assert beta_binomial_sf(31, 100, 150.5, 850.5) < beta_binomial_sf(30.4, 100, 150.5, 850.5) < predictive
    assert math.isclose(binomial_cdf(10, 50, 0.3), 1.0 - binomial_sf(11, 50, 0.3))


@given(k=st.integers(min_value=0, max_value=120), mu=st.floats(min_value=0.01, max_value=80))
def test_poisson_tail_matches_the_exact_sum(k: int, mu: float) -> None:
    assert math.isclose(poisson_sf(k, mu), max(0.0, exact_poisson_sf(k, mu)), rel_tol=1e-6, abs_tol=1e-9)


def test_tails_are_monotone_in_fractional_counts() -> None:
    values = [binomial_sf(k / 4, 50, 0.15) for k in range(0, 200)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert binomial_sf(0, 10, 0.5) == 1.0 and binomial_sf(11, 10, 0.5) == 0.0
    assert poisson_sf(0, 3) == 1.0 and poisson_sf(5, 0) == 0.0


def test_bonferroni_and_benjamini_hochberg() -> None:
    p = [0.001, 0.008, 0.039, 0.041, 0.6]
    assert significant(p, 0.05, "bonferroni") == [True, True, False, False, False]
    # BH: ranks 1..5 thresholds 0.01, 0.02, 0.03, 0.04, 0.05: the largest passing rank is 2
    assert significant(p, 0.05, "bh") == [True, True, False, False, False]
    assert significant([0.01, 0.02, 0.03], 0.05, "bh") == [True, True, True]
    assert significant([0.004], 0.05, "bonferroni", min_family=10) == [True]
    assert significant([0.006], 0.05, "bonferroni", min_family=10) == [False]
    assert significant([], 0.05, "bh") == []


def test_state_codec_round_trip_and_corruption() -> None:
    state = {"a": [1, 2.5, "x"], "b": {"c": None}}
    assert decode_state(encode_state(state)) == state
    for bad in (b"", b"FSA1garbage", b"{}"):
        try:
            decode_state(bad)
        except SnapshotDecodeError:
            pass
        else:
            raise AssertionError(bad)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 200_000 + b"]" * 200_000,  # json.loads raised RecursionError
        b'{"a": ' + b"9" * 5000 + b"}",  # json.loads raised ValueError: over 4,300 digits
        b'{"a": NaN}',  # read, it made every later save fail (encode_state allows no NaN)
        b'{"a": 1e999}',
        b'{"key": "\\ud83d"}',  # an unpaired surrogate: read, it broke fingerprints and documents
        b"\xff\xfe",
    ],
)
def test_a_state_record_encode_state_never_writes_is_corrupt_not_a_crash(payload: bytes) -> None:
    """The state topic is the worker's own, but a record it cannot use must not stop it: the worker reads
    the same record at every restart."""
    with pytest.raises(SnapshotDecodeError, match="corrupt"):
        decode_state(MAGIC + zlib.compress(payload))


def test_alert_documents_follow_the_contract() -> None:
    a = Alert(
        rule="negative_share", key_type="ticker", key="A", status="firing", severity="warning",
        starts_at=1_700_000_000.0, ends_at=None, window_start=1_700_000_000.0, window_end=1_700_000_060.0,
        count=50, negative_count=20.0, negative_share=0.4, baseline_share=0.1, expected_negative=5.0,
        p_value=1e-9, summary="s",
    )  # fmt: skip
    doc = a.es_document()
    contract = "fingerprint rule key_type key status severity starts_at ends_at summary p_value"
    contract += " negative_share baseline_share count negative_count"
    assert set(contract.split()) <= set(doc)
    assert a.alert_id == f"{a.fingerprint}:2023-11-14T22:13:20Z" == f"{doc['fingerprint']}:{doc['starts_at']}"
    assert rfc3339(1.5) == "1970-01-01T00:00:01.500Z"
    assert Alert.from_dict(a.to_dict()) == a
