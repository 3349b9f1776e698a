"""Stage 1: Kafka consumers, decoding, validation, batching and dead-letter records."""
