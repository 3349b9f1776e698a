"""The model shipped in inference/models/default: loads, labels unambiguous texts correctly, fails fast
on a GPU request without a GPU, and the `label` / `evaluate` commands work on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finsent.cli import main
from inference.labeler import (
    GpuUnavailableError,
    OnnxLabeler,
    _check_finite,
    available_cpus,
    ensure_on_gpu,
    load_labeler,
    preload_cuda_libraries,
)
from inference.model_dir import default_model_dir, read_model_config, serving_version


@pytest.fixture(scope="module")
def labeler() -> OnnxLabeler:
    return load_labeler(threads=1)


def test_shipped_model_directory_is_complete() -> None:
    directory = default_model_dir()
    config = read_model_config(directory)
    assert len(config.topic_labels) == 20
    assert config.sentiment_labels == ("negative", "neutral", "positive")
    for name in ("finsent_config.json", "tokenizer.json", "model_card.json", "MODEL_CARD.md"):
        assert (directory / name).is_file()
    assert config.variant_path("cpu").is_file() and config.variant_path("cuda").is_file()
    card = json.loads((directory / "model_card.json").read_text(encoding="utf-8"))
    assert card["model_version"] == config.model_version
    assert not list(directory.glob("*fp32*"))


@pytest.mark.parametrize(
    ("text", "sentiment"),
    [
        ("$XYZ shares plunge 30% after the company slashes guidance and misses estimates", "negative"),
        ("Stock soars to a record high after blowout quarter and raised full-year guidance", "positive"),
        ("Goldman downgrades $ABC to sell, cuts price target", "negative"),
        ("$DEF upgraded to buy at Morgan Stanley, price target raised", "positive"),
    ],
)
def test_unambiguous_sentiment(labeler: OnnxLabeler, text: str, sentiment: str) -> None:
    assert labeler.label([text])[0].sentiment == sentiment


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("Acme Corp declares quarterly dividend of $0.25 per share", "Dividend"),
        ("Acme to report fourth-quarter earnings after the bell on Thursday", "Earnings"),
        ("Fed raises interest rates by 25 basis points, Powell signals more hikes", "Fed | Central Banks"),
        ("Oil prices jump as OPEC+ agrees to cut crude output", "Energy | Oil"),
    ],
)
def test_unambiguous_topics(labeler: OnnxLabeler, text: str, topic: str) -> None:
    assert labeler.label([text])[0].topic == topic


def test_batch_order_scores_and_long_text(labeler: OnnxLabeler) -> None:
    texts = ["Oil prices jump as OPEC cuts output", "x", "Acme declares quarterly dividend"] * 5
    texts.append("Acme declares a quarterly dividend of $0.25 per share. " * 40)
    preds = labeler.label(texts)
    single = [labeler.label([t])[0] for t in texts[:3]]
    for batched, alone in zip(preds[:3], single, strict=True):
        # same labels; int8 activations are quantized per batch, so scores move a little with the batch
        assert (batched.topic, batched.sentiment) == (alone.topic, alone.sentiment)
        assert batched.topic_score == pytest.approx(alone.topic_score, abs=0.15)
    assert preds[-1].topic == "Dividend"
    for p in preds:
        assert p.topic_score == max(p.topic_probs.values())
        assert sum(p.sentiment_probs.values()) == pytest.approx(1.0)
    assert labeler.label([]) == []
    with pytest.raises(TypeError, match=r"not one string: label\(\[text\]\)"):
        labeler.label("Fed holds rates")  # a str is a sequence too: each character was labeled


def test_slice_settings_reach_the_labeler() -> None:
    from finsent.app import load_model
    from finsent.settings import Settings

    default = load_model(Settings(model={"threads": 1}))
    assert isinstance(default, OnnxLabeler)
    assert (default.batch_size, default.slice_tokens) == (64, 256)
    fixed = load_model(Settings(model={"threads": 1, "batch_size": 8, "slice_tokens": 0}))
    assert isinstance(fixed, OnnxLabeler)
    assert (fixed.batch_size, fixed.slice_tokens) == (8, None)
    # clear-cut texts: int8 activations are quantized per call, so a near-tie ("Shares plunge": Markets
    # 0.56) may flip with the slicing (docs/model.md)
    texts = [
        "Oil prices jump as OPEC cuts output",
        "Acme declares quarterly dividend",
        "Acme shares plunge 20% in early trading",
    ] * 4
    assert [p.topic for p in default.label(texts)] == [p.topic for p in fixed.label(texts)]


def test_streams_label_like_one_stream_running_the_same_slices() -> None:
    """Two streams put every slice's results back in its rows. The slicing itself depends on the streams
    (`balanced_batches` evens it out for them), and dynamic int8 quantizes per slice, so the one-stream
    labeler is given the two-stream slicing to compare like with like."""
    from finsent.app import load_model
    from finsent.settings import Settings

    two = load_labeler(threads=2)
    one = load_model(Settings(model={"threads": 2, "streams": 1}))
    assert isinstance(one, OnnxLabeler)
    assert (two.streams, one.streams, load_labeler(threads=1).streams) == (2, 1, 1)
    texts = [f"$ACME shares {w} after the {q} results" for w in ("jump", "plunge", "drift") for q in "ab"] * 8
    texts += ["Fed holds rates", "Acme declares a quarterly dividend of $0.25 per share. " * 30]
    a = two.probabilities(texts)
    one.slice_parts = 2
    b = one.probabilities(texts)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_cuda_without_gpu_fails_fast() -> None:
    with pytest.raises(GpuUnavailableError, match="cuda"):
        load_labeler(device="cuda")


def test_a_session_that_fell_back_to_the_cpu_is_refused(labeler: OnnxLabeler) -> None:
    # onnxruntime-gpu on a machine without a usable GPU returns exactly such a CPU-only session
    with pytest.raises(GpuUnavailableError, match="fell back to the CPU"):
        ensure_on_gpu(labeler.session)


def test_preloading_cuda_libraries_keeps_stdout_clean(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime.preload_dlls prints what it finds; the labeler logs it instead of writing to stdout."""
    import onnxruntime

    class PrintingRuntime:
        @staticmethod
        def preload_dlls() -> None:
            print("Failed to load libcudnn.so.9: not found")

    class FailingRuntime:
        @staticmethod
        def preload_dlls() -> None:
            raise RuntimeError("Invalid parameter of directory")

    with caplog.at_level("INFO", logger="inference.labeler"):
        preload_cuda_libraries(onnxruntime)  # the real (CPU) build: nothing to load, nothing raised
        preload_cuda_libraries(PrintingRuntime())
        preload_cuda_libraries(FailingRuntime())
        preload_cuda_libraries(object())  # onnxruntime < 1.21 has no preload_dlls
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == [
        "onnxruntime.preload_dlls: Failed to load libcudnn.so.9: not found",
        "onnxruntime.preload_dlls failed: Invalid parameter of directory",
    ]


def test_onnxruntime_telemetry_is_off_unless_the_operator_says_otherwise(labeler: OnnxLabeler) -> None:
    # recent Linux builds send usage events to Microsoft from every labeler otherwise
    assert os.environ.get("ORT_DISABLE_TELEMETRY") == "1"


def test_auto_device_falls_back_to_cpu() -> None:
    labeler = load_labeler(device="auto", threads=1)
    assert labeler.device == "cpu" and labeler.variant == "cpu"
    assert labeler.label(["Fed holds rates steady"])[0].topic in labeler.topic_labels


def test_cli_label_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label", "--threads", "1", "Acme declares quarterly dividend", "Shares plunge"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert lines[0]["topic"] == "Dividend"
    assert set(lines[0]["sentiment_probs"]) == {"negative", "neutral", "positive"}
    config = read_model_config(default_model_dir())
    assert lines[0]["model_version"] == serving_version(config, "cpu")
    assert lines[0]["model_version"].startswith(config.model_version + "+cpu.")


def test_serving_version_tells_variants_and_edited_calibration_apart(tmp_path: Path) -> None:
    # documents labeled by the fp16 CUDA variant, or after a temperature edit, must not carry the
    # version of the int8 model as exported
    config = read_model_config(default_model_dir())
    cpu, cuda = serving_version(config, "cpu"), serving_version(config, "cuda")
    assert cpu != cuda and cuda.startswith(config.model_version + "+cuda.")
    assert serving_version(read_model_config(default_model_dir()), "cpu") == cpu  # stable across loads
    edited = tmp_path / "model"
    shutil.copytree(default_model_dir(), edited)
    raw = json.loads((edited / "finsent_config.json").read_text(encoding="utf-8"))
    raw["temperatures"]["sentiment"] *= 1.5
    (edited / "finsent_config.json").write_text(json.dumps(raw), encoding="utf-8")
    recalibrated = serving_version(read_model_config(edited), "cpu")
    assert recalibrated != cpu and recalibrated.startswith(config.model_version + "+cpu.")


@pytest.mark.parametrize(
    ("text", "labeled", "skipped"),
    [
        # the tokenizer drops zero-width characters: the model would label an empty text with confidence
        ("\u200b\u200b", "Shares plunge", "blank"),
        ("\U0001f680\U0001f680", "Shares plunge \U0001f680", "unreadable"),  # no word the model knows
    ],
    ids=["invisible-only", "no-known-word"],
)
def test_cli_label_skips_what_the_pipeline_skips(
    text: str, labeled: str, skipped: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["label", "--threads", "1", text, labeled]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"text": text, "skipped": skipped} and "sentiment" in lines[1]


def test_one_stream_sessions_get_an_explicit_thread_count() -> None:
    """Left unset, ONNX Runtime starts a thread per core of the node, not of the container's CPU limit."""
    one = load_labeler(streams=1)
    assert one.session.get_session_options().intra_op_num_threads == available_cpus()
    assert load_labeler(threads=1).session.get_session_options().intra_op_num_threads == 1


def test_non_finite_logits_are_refused_not_labeled() -> None:
    """An fp16 overflow gives inf logits: softmax makes every probability NaN and argmax the first label.
    Refused, the pipeline labels the texts one at a time and dead-letters those that fail."""
    _check_finite(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(FloatingPointError, match="non-finite logits for 1 of 2 rows"):
        _check_finite(np.array([[0.0, np.inf], [0.0, 1.0]]), np.ones((2, 3)))
    with pytest.raises(FloatingPointError):
        _check_finite(np.zeros((1, 3)), np.array([[np.nan, 0.0, 0.0]]))


def test_cli_label_refuses_bad_labeler_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label", "--streams", "0", "Shares plunge"]) == 2
    assert "streams" in capsys.readouterr().err


def test_cli_label_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "finsent", "label", "--threads", "1"],
        input="Oil prices jump as OPEC cuts output\nFed raises rates\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["Oil prices jump as OPEC cuts output", "Fed raises rates"]


def _csv(tmp_path: Path, rows: list[tuple[str, str]], name: str = "eval.csv") -> Path:
    import csv

    path = tmp_path / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


SENTIMENT_ROWS = [
    ("$XYZ shares plunge 30% after the company slashes guidance", "0"),
    ("Stock soars to a record high after blowout quarter", "1"),
    ("Acme to present at the investor conference on Tuesday", "2"),
    ("Goldman downgrades $ABC to sell", "0"),
]


def test_cli_evaluate_json_with_tfns_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv(tmp_path, SENTIMENT_ROWS)
    assert main(["evaluate", "--task", "sentiment", "--data", str(data), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 4 and report["accuracy"] >= 0.75
    assert 0.0 <= report["macro_f1"] <= 1.0 and "confusion_matrix" in report and "ece" in report
    # the same data with names, and with an explicit map that swaps the ids
    named = _csv(
        tmp_path,
        [(t, {"0": "bearish", "1": "bullish", "2": "neutral"}[y]) for t, y in SENTIMENT_ROWS],
        "named.csv",
    )
    assert main(["evaluate", "--task", "sentiment", "--data", str(named), "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["accuracy"]
    # the short aliases `finsent train` reads data with (the shipped model stored only bearish / bullish)
    short = _csv(
        tmp_path, [(t, {"0": "neg", "1": "pos", "2": "neu"}[y]) for t, y in SENTIMENT_ROWS], "short.csv"
    )
    assert main(["evaluate", "--task", "sentiment", "--data", str(short), "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["accuracy"]
    swapped = "0=positive,1=negative,2=neutral"
    assert (
        main(["evaluate", "--task", "sentiment", "--data", str(data), "--json", "--label-map", swapped]) == 0
    )
    assert json.loads(capsys.readouterr().out)["accuracy"] < report["accuracy"]


def test_cli_evaluate_text_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv(tmp_path, [("Acme declares quarterly dividend of $0.25", "4"), ("Fed raises rates", "1")])
    plot = tmp_path / "cm.png"
    assert main(["evaluate", "--task", "topic", "--data", str(data), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "confusion matrix" in out and "Dividend" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_unknown_label_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _csv(tmp_path, [("Shares fall", "sideways")])
    assert main(["evaluate", "--task", "sentiment", "--data", str(data)]) == 2
    assert "unknown label" in capsys.readouterr().err


def test_tokenizing_apart_from_the_model_gives_the_same_labels(labeler: OnnxLabeler) -> None:
    """The pipeline tokenizes batch N+1 while the model runs batch N (`StagedLabeler`)."""
    from inference.types import StagedLabeler

    texts = ["$AAPL beats estimates", "Fed holds rates " * 200, "Oil slips as supply grows"]
    assert isinstance(labeler, StagedLabeler)
    encoded = labeler.encode(texts)
    assert encoded.texts == 3 and len(encoded.rows) > 3  # the long text became several chunks
    staged = labeler.label_encoded(encoded)
    direct = labeler.label(texts)
    assert [(p.topic, p.sentiment) for p in staged] == [(p.topic, p.sentiment) for p in direct]
    assert [p.sentiment_score for p in staged] == pytest.approx([p.sentiment_score for p in direct])
    assert labeler.label_encoded(labeler.encode([])) == []


def test_a_model_needing_inputs_finsent_does_not_feed_fails_at_load(tmp_path: Path) -> None:
    """A model exported with `token_type_ids` loaded, and failed the first batch after the worker
    reported ready."""
    import onnx

    source = default_model_dir()
    for f in source.iterdir():
        if f.name != "model.int8.onnx":
            (tmp_path / f.name).symlink_to(f)
    model = onnx.load(str(source / "model.int8.onnx"))
    extra = onnx.helper.make_tensor_value_info("token_type_ids", onnx.TensorProto.INT64, ["batch", "seq"])
    model.graph.input.append(extra)
    onnx.save(model, str(tmp_path / "model.int8.onnx"))
    with pytest.raises(ValueError, match=r"needs inputs \['token_type_ids'\]; finsent feeds only"):
        load_labeler(tmp_path, threads=1)


def test_a_config_that_does_not_match_the_onnx_heads_fails_at_load(tmp_path: Path) -> None:
    """Checked when the model is loaded (before the worker reports ready), not on the first batch."""
    source = default_model_dir()
    for f in source.iterdir():
        (tmp_path / f.name).symlink_to(f)
    config = json.loads((source / "finsent_config.json").read_text(encoding="utf-8"))
    config["topic_labels"] = config["topic_labels"][:-1]
    (tmp_path / "finsent_config.json").unlink()
    (tmp_path / "finsent_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"topic_logits has 20 classes but finsent_config\.json lists 19"):
        load_labeler(tmp_path, threads=1)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").write_text("not a tokenizer")
    config["topic_labels"] = json.loads((source / "finsent_config.json").read_text())["topic_labels"]
    (tmp_path / "finsent_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json: cannot load the tokenizer"):
        load_labeler(tmp_path, threads=1)


def test_invalid_unicode_in_one_text_does_not_fail_the_batch(labeler: OnnxLabeler) -> None:
    """Invalid UTF-8 from a pipe or argv arrives in Python as unpaired surrogates."""
    texts = ["Apple beats estimates", "Oil \udcff slumps", "Fed holds rates"]
    preds = labeler.label(texts)
    assert len(preds) == 3
    alone = labeler.label(["Apple beats estimates"])[0]
    assert (preds[0].topic, preds[0].sentiment) == (alone.topic, alone.sentiment)


def test_a_huge_text_is_labeled_on_its_first_chunks_only(labeler: OnnxLabeler) -> None:
    huge = "Acme shares plunge after the fraud charges. " * 2_500  # 110,000 characters
    assert len(labeler.encode([huge]).rows) == labeler.max_chunks == 32
    few = load_labeler(threads=1, max_chunks=2)
    assert len(few.encode([huge]).rows) == 2 and few.label([huge])[0].sentiment == "negative"
