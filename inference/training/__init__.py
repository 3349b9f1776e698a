"""Offline training, export and quantization of finsent's model
(needs the `train` extra: torch, transformers).

Nothing on the serving path imports this package."""
