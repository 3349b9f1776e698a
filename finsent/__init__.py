"""finsent wiring: settings, command line, and the runners that connect the stages
(ingest -> inference -> alerts) to Kafka, Elasticsearch and Prometheus."""

__version__ = "0.1.0"
