"""Readers turn one input shard into a sample table (``schemas.tables.SAMPLE_SCHEMA``)."""

from curate.readers.base import ShardRef, list_shards, read_shard

__all__ = ["ShardRef", "list_shards", "read_shard"]
