"""Stage 3: windowed negative-sentiment spike detection and notifiers."""
