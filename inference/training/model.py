"""The multi-task network: one pretrained encoder, pooled, feeding a topic head and a sentiment head."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def load_encoder(base: str, *, attn_implementation: str | None = None) -> Any:
    """A Hugging Face encoder from a local directory (offline) or a hub id."""
    if Path(base).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel

    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModel.from_pretrained(base, **kwargs)


class MultiTaskClassifier(nn.Module):
    """Encoder -> pooling (mean over real tokens, or CLS) -> dropout -> two linear heads (logits)."""

    def __init__(
        self, encoder: Any, n_topics: int, n_sentiments: int, *, pooling: str = "mean", dropout: float = 0.1
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError("pooling must be mean or cls")
        self.encoder = encoder
        self.pooling = pooling
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.topic_head = nn.Linear(hidden, n_topics)
        self.sentiment_head = nn.Linear(hidden, n_sentiments)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = self.dropout(self.pool(out.last_hidden_state, attention_mask))
        return self.topic_head(pooled), self.sentiment_head(pooled)

    def heads_state(self) -> dict[str, torch.Tensor]:
        """Head weights only (the encoder is saved with save_pretrained)."""
        return {
            **{f"topic_head.{k}": v for k, v in self.topic_head.state_dict().items()},
            **{f"sentiment_head.{k}": v for k, v in self.sentiment_head.state_dict().items()},
        }

    def load_heads_state(self, state: dict[str, torch.Tensor]) -> None:
        self.topic_head.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("topic_head.")})
        self.sentiment_head.load_state_dict(
            {k[15:]: v for k, v in state.items() if k.startswith("sentiment_head.")}
        )
