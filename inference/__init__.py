"""Stage 2: tokenizer + ONNX Runtime sessions that label texts; training and export of the model."""
