"""The tests' tiny training run: a 2-layer encoder (the `tiny_base` fixture) trained for 2 steps."""

from __future__ import annotations

from pathlib import Path


def train_tiny(sentiment_csv: Path, topic_csv: Path, base: Path, out: Path) -> Path:
    """`finsent train`'s code on the tiny encoder, sized to take seconds; returns the checkpoint."""
    from inference.training.prepare import TFNS_SENTIMENT_IDS
    from inference.training.train import TrainConfig, train

    return train(
        TrainConfig(
            sentiment_csv=sentiment_csv,
            topic_csv=topic_csv,
            base=str(base),
            out=out,
            max_steps=2,
            batch_size=16,
            max_length=32,
            dev_fraction=0.25,
            progress=False,
            threads=1,
            sentiment_id_map=dict(TFNS_SENTIMENT_IDS),  # the tests' files use the TFNS ids
        )
    )
