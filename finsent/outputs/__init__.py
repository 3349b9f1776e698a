"""Adapters that make outputs durable: Kafka labeled topic, dead-letter topic, Elasticsearch."""
