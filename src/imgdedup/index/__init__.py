"""Index backends: in-memory (embedded default) and Redis multi-index hashing."""
