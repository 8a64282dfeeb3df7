"""Dialogue records: reading the seed formats, writing them back, JSONL shards."""
