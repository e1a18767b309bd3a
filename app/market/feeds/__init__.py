"""Market data sources. Both produce the typed events of `events.py` into the same pipeline."""
