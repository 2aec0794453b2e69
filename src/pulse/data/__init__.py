"""Typed records and readers for MLLMU-Bench (parquet) and MMBench (TSV). Imports nothing else of ours."""
