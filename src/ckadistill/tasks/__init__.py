"""Task-specific data, metrics and evaluation: one module per task family (seq2seq: summarisation, translation)."""
