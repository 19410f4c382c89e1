"""Packing: tokenize text, decompose token sequences into power-of-two length buckets, write them.

``tokenize`` and ``decompose`` are registered steps; ``buckets`` writes the per-bucket shard
sets and ``manifest.json`` when a recipe's ``output.layout`` is ``buckets``.
"""
