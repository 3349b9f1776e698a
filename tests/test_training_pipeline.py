"""Integration: train a tiny encoder for a few steps on a small sample, export, quantize, load through
ONNX Runtime and label texts. The encoder is a 2-layer BERT built here from a config (no download) that
uses the packaged MiniLM tokenizer, so the test is fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.model_dir import read_model_config
from inference.preprocessing import DEFAULT_STEPS
from tests.training_helpers import train_tiny

pytest.importorskip("torch", reason="the `train` extra is not installed")


@pytest.fixture(scope="module")
def sample_csvs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    sentiment = folder / "sentiment" / "train.csv"
    topic = folder / "topic" / "train.csv"
    sentiment.parent.mkdir()
    topic.parent.mkdir()
    words = {0: "plunge crash miss", 1: "soar beat record", 2: "schedule meeting update"}
    rows = ["text,label"] + [f"Company {i} shares {words[i % 3]} today,{i % 3}" for i in range(64)]
    sentiment.write_text("\n".join(rows) + "\n", encoding="utf-8")
    topics = {0: "dividend payout raised", 1: "earnings quarter revenue", 2: "oil crude barrel"}
    rows = ["text,label"] + [f"Firm {i} {topics[i % 3]} news,{i % 3}" for i in range(64)]
    topic.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    (topic.parent / "DATASET_CARD.md").write_text(
        '"LABEL_0": "Dividend",\n"LABEL_1": "Earnings",\n"LABEL_2": "Energy | Oil"\n', encoding="utf-8"
    )
    return sentiment, topic


@pytest.mark.slow
def test_train_export_quantize_and_label(
    tiny_base: Path, sample_csvs: tuple[Path, Path], tmp_path: Path
) -> None:
    from inference.labeler import load_labeler
    from inference.training.export import NO_QUANTIZATION_GATE, export

    sentiment, topic = sample_csvs
    ckpt = train_tiny(sentiment, topic, tiny_base, tmp_path / "ckpt")
    meta = json.loads((ckpt / "train_meta.json").read_text())
    assert meta["steps"] == 2
    assert meta["topic_labels"] == ["Dividend", "Earnings", "Energy | Oil"]
    assert meta["sentiment_labels"] == ["negative", "neutral", "positive"]
    assert meta["calibration"]["topic"]["temperature"] > 0

    # Two training steps leave near-tied logits that int8/fp16 rounding may flip: only the exact ONNX
    # export is held to the default bar here (test_parity_gate covers the gate itself).
    gate = NO_QUANTIZATION_GATE  # what `finsent export --no-quantization-gate` passes
    model_dir = export(ckpt, tmp_path / "model", fp16=True, gate=gate, comparisons={"same run": ckpt})
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "MODEL_CARD.md",
        "finsent_config.json",
        "model.fp16.onnx",
        "model.int8.onnx",
        "model_card.json",
        "tokenizer.json",
    ]
    # the clean-up the model was trained with travels in its config, so serving applies the same
    assert meta["preprocessing"] == list(DEFAULT_STEPS)
    assert read_model_config(model_dir).preprocessing == DEFAULT_STEPS
    card = json.loads((model_dir / "model_card.json").read_text())
    assert list(card["comparisons"]) == ["this model", "same run"]
    assert card["parity_gate"] == {
        "onnx_fp32_vs_torch": 0.999,
        "int8_per_channel_vs_fp32": 0.0,
        "fp16_vs_fp32": 0.0,
    }
    assert "| same run | full |" in (model_dir / "MODEL_CARD.md").read_text()
    parity = card["parity"]["onnx_fp32_vs_torch"]
    assert parity["topic_agreement"] == 1.0 and parity["sentiment_max_prob_diff"] < 1e-4
    assert 0.0 <= card["parity"]["int8_per_channel_vs_fp32"]["topic_agreement"] <= 1.0
    assert 0.0 <= card["parity"]["fp16_vs_fp32"]["sentiment_agreement"] <= 1.0
    assert card["data"][0]["sha256"] and card["files"]["model.int8.onnx"]["sha256"]
    import onnx

    int8_ops = {n.op_type for n in onnx.load(str(model_dir / "model.int8.onnx")).graph.node}
    assert "LayerNormalization" in int8_ops and not int8_ops & {"SkipLayerNormalization", "BiasGelu"}

    labeler = load_labeler(model_dir, threads=1)
    long_text = "Oil prices jump. " * 40
    preds = labeler.label(["Company shares soar", "", long_text])
    assert len(preds) == 3
    assert len(labeler.encode([long_text]).rows) > 1
    for p in preds:
        assert p.topic in labeler.topic_labels and p.sentiment in ("negative", "neutral", "positive")
        assert sum(p.sentiment_probs.values()) == pytest.approx(1.0)
        assert sum(p.topic_probs.values()) == pytest.approx(1.0)


def test_cli_train_with_default_batch_size(
    tiny_base: Path, sample_csvs: tuple[Path, Path], tmp_path: Path
) -> None:
    """`finsent train` with no --batch-size trains with the TrainConfig default (it once passed None)."""
    from finsent.cli import main
    from inference.training.train import TrainConfig

    sentiment, topic = sample_csvs
    out = tmp_path / "cli-ckpt"
    argv = ["train", "--base", str(tiny_base), "--sentiment-data", str(sentiment), "--topic-data", str(topic)]
    argv += ["--out", str(out), "--max-steps", "1", "--max-length", "32", "--dev-fraction", "0.25"]
    argv += ["--threads", "1", "--no-progress", "--preprocessing", "url_placeholder"]
    argv += ["--sentiment-label-map", "0=negative,1=positive,2=neutral"]
    assert main(argv) == 0
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["training"]["batch_size"] == TrainConfig().batch_size == 32
    assert meta["preprocessing"] == ["url_placeholder"]
