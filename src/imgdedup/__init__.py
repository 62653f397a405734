"""imgdedup: streaming, ingestion-time image deduplication."""

__version__ = "0.1.0"
