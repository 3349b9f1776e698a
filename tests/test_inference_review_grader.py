"""Review findings on the inference stage: the Python API's way from a prediction's label name to a
dataset's id (the model's label order is not the dataset's), `Text,Label` headers matched in any case,
and integer labels written as floats (`2.0`, as pandas writes an int column with gaps)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from finsent.cli import main
from inference.datasets import read_labeled_csv
from inference.labeler import OnnxLabeler, load_labeler
from inference.labels import SENTIMENT_ALIASES, dataset_ids, resolve_label
from inference.training.prepare import TrainInputError, prepare_data
from inference.training.train import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]
TFNS_IDS = {"0": "negative", "1": "positive", "2": "neutral"}
# unambiguous headlines with their TFNS ids (0 bearish, 1 bullish, 2 neutral)
ROWS = [
    ("Stocks plunge as recession fears mount; $XYZ crashes 20%", "0"),
    ("$ACME soars after record earnings beat, raises guidance", "1"),
    ("Acme to present at the investor conference on Tuesday", "2"),
    ("Goldman downgrades $ABC to sell", "0"),
]


@pytest.fixture(scope="module")
def labeler() -> OnnxLabeler:
    return load_labeler(threads=1)


def _write(path: Path, header: list[str], rows: list[tuple[str, str]], *, bom: bool = False) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    return path


def _evaluate(path: Path, capsys: pytest.CaptureFixture[str], task: str = "sentiment") -> tuple[int, Any]:
    code = main(["evaluate", "--task", task, "--data", str(path), "--json", "--threads", "1"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, json.loads(out) if code == 0 else err


# 1. label names <-> dataset ids, from the model's config


def test_dataset_label_maps_give_the_shipped_models_tfns_ids(labeler: OnnxLabeler) -> None:
    assert list(labeler.sentiment_labels) == SENTIMENT_LABELS  # not the dataset's id order
    assert dict(labeler.dataset_label_maps["sentiment"]) == {0: "negative", 1: "positive", 2: "neutral"}
    assert [labeler.dataset_id("sentiment", n) for n in SENTIMENT_LABELS] == [0, 2, 1]
    topics = labeler.dataset_label_maps["topic"]
    assert [labeler.dataset_id("topic", topics[i]) for i in range(20)] == list(range(20))
    assert labeler.dataset_id("sentiment", "Bearish") == 0  # an alias, any case
    with pytest.raises(TypeError):
        labeler.dataset_label_maps["sentiment"][0] = "positive"  # type: ignore[index]


def test_dataset_ids_score_predictions_against_dataset_labels(labeler: OnnxLabeler) -> None:
    predictions = labeler.label([text for text, _ in ROWS])
    by_index = [labeler.sentiment_labels.index(p.sentiment) for p in predictions]
    by_id = [labeler.dataset_id("sentiment", p.sentiment) for p in predictions]
    truth = [int(label) for _, label in ROWS]
    assert by_id == truth
    assert by_index != truth  # the trap the docs warn about


def test_dataset_maps_are_read_from_the_config_not_hard_coded(
    labeler: OnnxLabeler, monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = {"sentiment": {"0": "neutral", "5.0": "bearish", "up": "positive"}}
    monkeypatch.setattr(labeler, "config", replace(labeler.config, dataset_label_maps=maps))
    assert dict(labeler.dataset_label_maps["sentiment"]) == {0: "neutral", 5: "negative"}
    assert "topic" not in labeler.dataset_label_maps
    assert labeler.dataset_id("sentiment", "negative") == 5
    assert labeler.dataset_id("sentiment", "positive") is None  # keyed by a name, not an id
    assert labeler.dataset_id("topic", "IPO") is None  # no map for the task
    with pytest.raises(ValueError, match="'bullishness' is no sentiment label"):
        labeler.dataset_id("sentiment", "bullishness")
    with pytest.raises(ValueError, match="unknown task"):
        labeler.dataset_id("sentiments", "negative")


def test_docs_warn_that_label_order_is_not_dataset_id_order() -> None:
    doc = (REPO_ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    api = doc.split("### Python API", 1)[1].split("### Commands", 1)[0]
    assert "label order is not the dataset's id order" in api
    assert 'labeler.dataset_id("sentiment",' in api and "dataset_label_maps" in api
    limits = doc.split("### Known limits", 1)[1].split("###", 1)[0]
    for fact in ("0.98-0.99", "English", "only a link", "74 %", "88 %", "93 %", "augment"):
        assert fact.lower() in limits.lower()


# 2. `text` / `label` columns in any case


def test_reader_matches_header_in_any_case_with_spaces_and_bom(tmp_path: Path) -> None:
    for name, header, rows, bom in (
        ("caps.csv", ["Text", "Label"], [("a", "x"), ("b", "y")], False),
        ("spaced.csv", [" LABEL ", " text"], [("x", "a"), ("y", "b")], True),
    ):
        data = read_labeled_csv(_write(tmp_path / name, header, rows, bom=bom))
        assert (data.texts, data.labels) == (["a", "b"], ["x", "y"])


def test_two_columns_of_one_name_are_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "two.csv", ["text", "Text", "label"], [("a", "b", "0")])
    message = "the header has two `text` columns: `text` (column 1) and `Text` (column 2)"
    with pytest.raises(ValueError) as exc:
        read_labeled_csv(path)
    assert message in str(exc.value)
    code, err = _evaluate(path, capsys)
    assert code == 2 and message in err
    from inference.datasets import find_columns

    assert find_columns(["id", "Label"], ("text", "label")) == {"label": 1}


def test_cli_evaluate_takes_a_capitalised_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _evaluate(_write(tmp_path / "caps.csv", ["Text", "Label"], ROWS, bom=True), capsys)
    assert code == 0 and report["n"] == 4 and report["accuracy"] == 1.0


# 3. integer labels written as floats


def test_resolve_label_reads_integer_valued_floats() -> None:
    def resolve(raw: str, id_map: dict[str, str] | None = TFNS_IDS) -> int:
        return resolve_label(raw, SENTIMENT_LABELS, id_map=id_map, aliases=SENTIMENT_ALIASES)

    assert [resolve(r) for r in ("2.0", "2.00", " 0.0 ", "1.0")] == [1, 1, 0, 2]
    assert resolve("2.0", None) == 2  # without a map: the model's own index, as `2`
    assert resolve("2.0", {"2.0": "negative", "2": "neutral"}) == 0  # a map naming it as written wins
    for raw in ("2.5", "2.", "٢.0"):
        with pytest.raises(ValueError, match="unknown label"):
            resolve(raw)
    from inference.labels import integer_form

    assert integer_form("10.000") == "10" and integer_form("1e1") == "1e1"


def test_cli_evaluate_takes_float_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(text, f"{label}.0") for text, label in ROWS]
    code, report = _evaluate(_write(tmp_path / "floats.csv", ["text", "label"], rows), capsys)
    assert code == 0 and report["n"] == 4 and report["accuracy"] == 1.0


def _train_cfg(tmp_path: Path, sentiment: Path, topic: Path) -> TrainConfig:
    return TrainConfig(sentiment_csv=sentiment, topic_csv=topic, out=tmp_path / "ckpt", dev_fraction=0.25)


def _sentiment_rows(ids: tuple[str, str, str]) -> list[tuple[str, str]]:
    words = ("plunge crash", "meeting update", "soar beat")
    return [(f"Company {i} shares {words[i % 3]} today", ids[i % 3]) for i in range(30)]


def _topic_rows(labels: tuple[str, str, str]) -> list[tuple[str, str]]:
    return [(f"Firm {i} {('dividend', 'earnings', 'oil')[i % 3]} news", labels[i % 3]) for i in range(30)]


def test_training_reads_float_labels_as_their_integers(tmp_path: Path) -> None:
    sentiment = _write(
        tmp_path / "tfns-sentiment" / "train.csv", ["text", "label"], _sentiment_rows(("0.0", "2.0", "1.0"))
    )
    # no dataset card: `1.0` and `1` are one topic, not two classes
    topic = _write(tmp_path / "t" / "train.csv", ["text", "label"], _topic_rows(("1.0", "1", "7.0")))
    data = prepare_data(_train_cfg(tmp_path, sentiment, topic))
    assert [data.sentiment_labels[k] for k in data.sentiment.y[:3]] == ["negative", "neutral", "positive"]
    assert data.topic_labels == ["1", "7"]
    # outside the TFNS folder, float ids are numbers that need a map, not unknown labels
    mine = _write(tmp_path / "mine" / "train.csv", ["text", "label"], _sentiment_rows(("0.0", "2.0", "1.0")))
    with pytest.raises(TrainInputError, match=r"its labels are numbers \(0\.0, 1\.0, 2\.0\)"):
        prepare_data(_train_cfg(tmp_path, mine, topic))


def test_one_dataset_id_written_twice_is_refused() -> None:
    """`0` and `00` (or `2` and `2.0`) silently took the last one's label."""
    with pytest.raises(ValueError, match="names id 0 twice"):
        dataset_ids({"0": "negative", "00": "positive"}, ["negative", "neutral", "positive"])
    with pytest.raises(ValueError, match="names id 2 twice"):
        dataset_ids({"2": "neutral", "2.0": "positive"}, ["negative", "neutral", "positive"])


def test_a_library_user_misusing_the_api_is_told_where(labeler: OnnxLabeler) -> None:
    """A misspelled task scored the topic head (accuracy 0.34 reported for "Sentiment"); a DataFrame
    column's NaN failed with "'float' object has no attribute 'isascii'" and no row; integer labels
    (a DataFrame's usual label column) failed on `.strip`."""
    from inference.evaluate import evaluate_texts

    texts = ["ACME shares plunge after guidance cut", "ACME beats estimates and raises its outlook"]
    with pytest.raises(ValueError, match="unknown task 'Sentiment': sentiment or topic"):
        evaluate_texts(labeler, texts, ["0", "1"], "Sentiment")  # type: ignore[arg-type]
    ids = labeler.config.dataset_label_maps["sentiment"]
    bearish = next(int(k) for k, v in ids.items() if v == "negative")
    bullish = next(int(k) for k, v in ids.items() if v == "positive")
    report = evaluate_texts(labeler, texts, [bearish, bullish], "sentiment")  # type: ignore[list-item]
    assert report["accuracy"] == 1.0
    for bad, shown in (
        (float("nan"), "texts[1] is float (a missing value, NaN?), not str"),
        (None, "texts[1] is NoneType (a missing value, NaN?), not str"),
        (b"x", "texts[1] is bytes, not str"),
    ):
        with pytest.raises(TypeError) as caught:
            labeler.label(["fine", bad])  # type: ignore[list-item]
        assert str(caught.value) == shown


def test_run_events_sorts_and_refuses_milliseconds() -> None:
    """Events grouped by ticker (a DataFrame sorted by ticker, then time) lost the second ticker's spike as
    late; times in milliseconds made every event late, with no error."""
    from alerts.backtest import run_events
    from alerts.config import AlertSettings
    from alerts.synthetic import make_events

    settings = AlertSettings(window_s=60, allowed_lateness_s=0)
    plans = [{"ticker:AAA": (40, 0.1), "ticker:BBB": (40, 0.1)}] * 30
    plans += [{"ticker:AAA": (40, 0.7), "ticker:BBB": (40, 0.7)}] * 3
    events = make_events(plans, window_s=60, seed=3)
    grouped = sorted(events, key=lambda e: (e.key, e.ts))
    fired = {a.key for a in run_events(settings, grouped).alerts if a.status == "firing"}
    assert fired == {"AAA", "BBB"}
    as_given = run_events(settings, grouped, sort=False)
    assert as_given.outcomes["late"] > 0
    with pytest.raises(ValueError, match=r"events\[0\]\.ts: .*epoch seconds expected, not milliseconds"):
        run_events(settings, [replace(events[0], ts=events[0].ts * 1000)])
