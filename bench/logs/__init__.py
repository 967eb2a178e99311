"""Log ingest benchmark: the collector's sustained rate against a plain COPY, and its latency."""
