"""Notification channels for alerts (adapters) and the dispatcher that retries, rate-limits and groups."""
