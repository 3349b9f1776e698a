"""Unit tests of the pure parts of inference: label mapping, chunking/aggregation, batching,
calibration, metrics, model-config parsing."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.batching import balanced_batches, length_sorted_batches, pad_batch
from inference.calibration import expected_calibration_error, fit_temperature, nll, softmax
from inference.chunking import aggregate, pack_token_runs, split_sentences
from inference.labels import SENTIMENT_ALIASES, parse_label_map, resolve_label, resolve_labels
from inference.metrics import (
    accuracy,
    binary_roc_auc,
    classification_report,
    confusion_matrix,
    macro_f1,
    per_class_prf,
    weighted_f1,
)
from inference.model_dir import read_model_config
from inference.types import Prediction

SENT = ["negative", "neutral", "positive"]
TFNS = {"0": "negative", "1": "positive", "2": "neutral"}


# --- label mapping ---------------------------------------------------------------------------------


def test_parse_label_map_inline_and_json(tmp_path: Path) -> None:
    assert parse_label_map("0=negative, 1=positive,2=neutral") == TFNS
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"0": "bearish", "1": "bullish"}), encoding="utf-8")
    assert parse_label_map(str(path)) == {"0": "bearish", "1": "bullish"}


def test_parse_label_map_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DATASET_LABEL=MODEL_LABEL"):
        parse_label_map("0negative")
    with pytest.raises(ValueError, match="cannot read the label map"):  # the CLI prints ValueErrors
        parse_label_map(str(tmp_path / "missing.json"))
    nulls = tmp_path / "nulls.json"
    nulls.write_text('{"0": null}', encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object of label names"):  # not a label called "None"
        parse_label_map(str(nulls))


def test_resolve_ids_through_dataset_map() -> None:
    assert resolve_labels(["0", "1", "2"], SENT, id_map=TFNS) == [0, 2, 1]


def test_resolve_names_aliases_and_case() -> None:
    assert resolve_label(" Positive ", SENT) == 2
    assert resolve_label("bearish", SENT, aliases=SENTIMENT_ALIASES) == 0
    assert resolve_label("BULLISH", SENT, aliases=SENTIMENT_ALIASES) == 2


def test_resolve_map_to_alias() -> None:
    assert resolve_label("0", SENT, id_map={"0": "bearish"}, aliases=SENTIMENT_ALIASES) == 0


def test_resolve_bare_index_without_map() -> None:
    assert resolve_label("1", SENT) == 1


def test_a_partial_label_map_does_not_fall_back_to_the_models_order() -> None:
    # TFNS "2" is neutral; read as the model's index 2 it was scored as positive
    with pytest.raises(ValueError, match="the label map does not name it"):
        resolve_labels(["0", "1", "2"], SENT, id_map={"0": "negative", "1": "positive"})


def test_resolve_unknown_label_is_an_error() -> None:
    for raw in ("meh", "\u0662", "\u00b2", "--1", "-1"):  # Arabic-Indic 2 and superscript 2 are no index
        with pytest.raises(ValueError, match="unknown label"):
            resolve_label(raw, SENT)
    with pytest.raises(ValueError, match="not a model label"):
        resolve_label("0", SENT, id_map={"0": "sideways"})


# --- chunking --------------------------------------------------------------------------------------


def test_split_sentences() -> None:
    assert split_sentences("Shares fell. Guidance cut!\nCEO out?  Yes") == [
        "Shares fell.",
        "Guidance cut!",
        "CEO out?",
        "Yes",
    ]
    assert split_sentences("   ") == ["   "]


def test_pack_joins_sentences_and_windows_long_ones() -> None:
    runs = [[1, 2], [3, 4], [5, 6, 7, 8, 9, 10, 11], [12]]
    assert pack_token_runs(runs, 4) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert pack_token_runs([], 4) == [[]]
    with pytest.raises(ValueError):
        pack_token_runs([[1]], 0)


@given(st.lists(st.lists(st.integers(0, 99), max_size=20), max_size=15), st.integers(1, 16))
@settings(max_examples=60, deadline=None)
def test_pack_keeps_every_token_in_order_within_budget(runs: list[list[int]], budget: int) -> None:
    chunks = pack_token_runs(runs, budget)
    assert [t for c in chunks for t in c] == [t for r in runs for t in r]
    assert all(len(c) <= budget for c in chunks)


def test_aggregate_weighted_mean() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = aggregate(probs, owners=[0, 0, 1], weights=[3, 1, 2], n_texts=3)
    np.testing.assert_allclose(out, [[0.75, 0.25], [0.5, 0.5], [0.0, 0.0]])


# --- batching --------------------------------------------------------------------------------------


def test_length_sorted_batches_cover_all_rows_shortest_first() -> None:
    lengths = [5, 1, 4, 2, 3]
    batches = length_sorted_batches(lengths, 2)
    assert [list(b) for b in batches] == [[1, 3], [4, 2], [0]]
    with pytest.raises(ValueError):
        length_sorted_batches(lengths, 0)


def test_length_sorted_batches_token_budget() -> None:
    # Sorted lengths 1, 2, 3, 4, 5: a slice grows while rows x its longest row stays within 8 tokens.
    lengths = [5, 1, 4, 2, 3]
    assert [list(b) for b in length_sorted_batches(lengths, 10, max_tokens=8)] == [[1, 3], [4, 2], [0]]
    # Short rows share a slice up to batch_size; a row longer than the budget runs alone.
    lengths = [50, 1, 1, 1, 1]
    assert [list(b) for b in length_sorted_batches(lengths, 3, max_tokens=8)] == [[1, 2, 3], [4], [0]]
    assert length_sorted_batches([], 4, max_tokens=8) == []
    with pytest.raises(ValueError):
        length_sorted_batches(lengths, 4, max_tokens=0)


def test_balanced_batches_even_out_the_slices_for_the_streams() -> None:
    # 30 rows of 10-19 tokens with a 100-token budget: greedy cuts 5 slices, and on 2 streams the fifth
    # runs alone; balanced: 6 slices, each within the budget, every row once, shortest rows first.
    lengths = [10 + (i * 7) % 10 for i in range(30)]
    assert len(length_sorted_batches(lengths, 64, 100)) == 5
    slices = balanced_batches(lengths, 64, 100, parts=2)
    assert len(slices) == 6
    assert sorted(int(i) for s in slices for i in s) == list(range(30))
    assert all(len(s) * max(lengths[i] for i in s) <= 100 for s in slices)
    longest = [max(lengths[i] for i in s) for s in slices]
    assert longest == sorted(longest)
    costs = [len(s) * max(lengths[i] for i in s) for s in slices]
    assert max(costs) - min(costs) <= 40  # greedy left one slice of 28 tokens beside four of 90-100


@pytest.mark.parametrize(
    ("lengths", "batch_size", "max_tokens", "parts", "count"),
    [
        ([5, 1, 4, 2, 3], 10, 8, 1, 3),  # one stream: the greedy slices
        ([5, 1, 4, 2, 3], 10, None, 2, 1),  # no token budget: batch_size rows a slice
        ([5, 1, 4, 2, 3], 10, 8, 2, 4),  # 3 -> 4
        ([50, 60, 70], 4, 8, 2, 3),  # every row over the budget runs alone: nothing to split
        ([3], 4, 8, 2, 1),  # fewer rows than streams
        ([], 4, 8, 2, 0),
        ([2] * 8, 2, 100, 4, 4),  # already a multiple of the parts (batch_size cuts 4)
        ([2] * 10, 2, 100, 4, 8),  # 5 -> 8, each at most batch_size rows
    ],
)
def test_balanced_batches_edges(
    lengths: list[int], batch_size: int, max_tokens: int | None, parts: int, count: int
) -> None:
    slices = balanced_batches(lengths, batch_size, max_tokens, parts)
    assert len(slices) == count
    assert sorted(int(i) for s in slices for i in s) == list(range(len(lengths)))
    assert all(len(s) <= batch_size for s in slices)


def test_pad_batch() -> None:
    ids, mask = pad_batch([[7, 8, 9], [7]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [7, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, _ = pad_batch([[7]], pad_id=0, width=4)
    assert ids.shape == (1, 4)


# --- calibration -----------------------------------------------------------------------------------


def test_softmax_rows_sum_to_one_and_temperature_flattens() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [1000.0, 0.0, 0.0]])
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert softmax(logits[:1], 3.0).max() < p[0].max()


def test_fit_temperature_recovers_the_true_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2.0
    labels = [int(rng.choice(3, p=row)) for row in softmax(true_logits)]
    over_confident = true_logits * 3.0  # the same model, three times too sure of itself
    t = fit_temperature(over_confident, labels)
    assert 2.5 < t < 3.6
    assert nll(over_confident, labels, t) < nll(over_confident, labels, 1.0)
    before = expected_calibration_error(softmax(over_confident), labels)
    after = expected_calibration_error(softmax(over_confident, t), labels)
    assert after < before / 2


def test_ece_of_a_perfectly_calibrated_case_is_zero() -> None:
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), [0, 1]) == 0.0
    assert math.isclose(expected_calibration_error(np.array([[0.9, 0.1]]), [1]), 0.9)


# --- metrics ---------------------------------------------------------------------------------------


def test_confusion_and_prf() -> None:
    y = [0, 0, 1, 1, 2]
    p = [0, 1, 1, 1, 0]
    assert confusion_matrix(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    precision, recall, _f1, support = per_class_prf(y, p, 3)
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(recall, [0.5, 1.0, 0.0])
    assert support.tolist() == [2, 2, 1]
    assert accuracy(y, p) == 0.6
    np.testing.assert_allclose(macro_f1(y, p, 3), (0.5 + 0.8 + 0.0) / 3)
    np.testing.assert_allclose(weighted_f1(y, p, 3), (0.5 * 2 + 0.8 * 2) / 5)


def test_macro_f1_ignores_classes_never_seen_nor_predicted() -> None:
    assert macro_f1([0, 1], [0, 1], 5) == 1.0


def test_roc_auc_with_ties_and_degenerate_input() -> None:
    assert binary_roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert binary_roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert binary_roc_auc([0.1, 0.2], [1, 1]) is None


def test_classification_report_shape() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    report = classification_report([0, 1, 2, 2], probs, SENT)
    assert report["n"] == 4 and report["accuracy"] == 0.75
    assert set(report["per_class"]) == set(SENT)
    assert report["confusion_matrix"][2] == [1, 0, 1]
    json.dumps(report)


# --- model config ----------------------------------------------------------------------------------


def test_model_config_reads_labels_from_the_file(tmp_path: Path) -> None:
    config = {
        "model_version": "v1",
        "topic_labels": ["b", "a"],
        "sentiment_labels": ["x", "y", "z"],
        "temperatures": {"topic": 1.5},
        "max_length": 64,
        "variants": {"cpu": "m.onnx"},
    }
    (tmp_path / "finsent_config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    parsed = read_model_config(tmp_path)
    assert parsed.topic_labels == ("b", "a") and parsed.temperatures["topic"] == 1.5
    assert parsed.variant_path("cpu") == tmp_path / "m.onnx"
    with pytest.raises(FileNotFoundError, match="no 'cuda' variant"):
        parsed.variant_path("cuda")


def test_model_config_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a finsent model directory"):
        read_model_config(tmp_path)
    (tmp_path / "finsent_config.json").write_text(json.dumps({"model_version": "v"}), encoding="utf-8")
    with pytest.raises(ValueError, match="malformed"):
        read_model_config(tmp_path)
    (tmp_path / "finsent_config.json").write_text('{"model_version": "v",', encoding="utf-8")
    with pytest.raises(ValueError, match=r"finsent_config\.json: not valid JSON"):
        read_model_config(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    good = {
        "model_version": "v1",
        "topic_labels": ["a", "b"],
        "sentiment_labels": ["x", "y", "z"],
        "temperatures": {"topic": 1.5, "sentiment": 1.0},
        "max_length": 128,
        "variants": {"cpu": "m.onnx"},
    }
    for change, words in [
        ({"topic_labels": "abc"}, "list of non-empty strings"),
        ({"sentiment_labels": ["x", "x", "z"]}, "duplicates"),
        ({"temperatures": {"topic": 0}}, "from 0.01 to 100.0"),
        ({"temperatures": {"sentiment": -1.2}}, "from 0.01 to 100.0"),
        ({"temperatures": {"topic": 1e-320}}, "from 0.01 to 100.0"),  # passed "above 0": NaN probabilities
        ({"temperatures": {"topic": True}}, "a temperature is a number"),  # was read as 1.0
        # a list where a map belongs raised AttributeError, past every caller's error handling
        ({"temperatures": [1.0, 1.0]}, "malformed model config"),
        ({"variants": ["m.onnx"]}, "malformed model config"),
        ({"dataset_label_maps": {"topic": ["a"]}}, "malformed model config"),
        ({"temperatures": {"Topic": 1.2, "sentiment": 1.0}}, r"unknown heads \['Topic'\]"),
        ({"max_length": 1000}, "max_length must be 8..512"),
        ({"model_version": " "}, "model_version is empty"),
        ({"variants": {"cpu": "gone.onnx"}}, "gone.onnx: named in finsent_config.json but missing"),
    ]:
        (tmp_path / "finsent_config.json").write_text(json.dumps({**good, **change}), encoding="utf-8")
        with pytest.raises((ValueError, FileNotFoundError), match=words):
            read_model_config(tmp_path)


def test_parity_gate() -> None:
    from inference.training.export import ParityGate, parity_failures

    def agree(topic: float, sentiment: float) -> dict[str, float]:
        return {"topic_agreement": topic, "sentiment_agreement": sentiment}

    parity = {
        "texts": 100,
        "onnx_fp32_vs_torch": agree(1.0, 1.0),
        "int8_per_channel_vs_fp32": agree(0.97, 0.94),
        "int8_default_vs_fp32": agree(0.5, 0.5),  # compared for the card, never shipped
        "fp16_vs_fp32": agree(1.0, 0.999),
    }
    assert parity_failures(parity, [], ParityGate()) == [
        "int8_per_channel_vs_fp32: sentiment agreement 0.9400 < 0.95"
    ]
    assert parity_failures(parity, ["fp16"], ParityGate(int8_per_channel_vs_fp32=0.9)) == [
        "fp16: NaN or infinite logits"
    ]


def test_cpu_limit_of_a_container_caps_the_threads(tmp_path: Path) -> None:
    from inference.labeler import available_cpus, cgroup_cpu_limit

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    assert cgroup_cpu_limit(v2) == 1.5 and available_cpus(v2) == min(2, available_cpus(tmp_path / "none"))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 1.0 and available_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None and cgroup_cpu_limit(tmp_path / "none") is None


class RefusesBoom:
    """A labeler whose model gives non-finite logits for texts with 'boom' (as an fp16 overflow would)."""

    model_version = "t"

    def label(self, texts: Sequence[str]) -> list[Prediction]:
        if any("boom" in t for t in texts):
            raise FloatingPointError("the model gave non-finite logits for 1 of 2 rows")
        return [Prediction("Markets", 0.9, "neutral", 0.8, {"Markets": 0.9}, {"neutral": 0.8}) for _ in texts]


def test_one_text_the_model_cannot_score_costs_only_its_own_label() -> None:
    from inference.labeler import label_each_if_refused

    got = label_each_if_refused(RefusesBoom(), ["calm", "boom", "quiet"])
    assert [p is None for p in got] == [False, True, False]
