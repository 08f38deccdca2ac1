"""Adapters that put GCL into other training frameworks.

- `gcl_train.integrations.sentence_transformers.GCLLoss`: the GCL loss as a
  sentence-transformers loss for `SentenceTransformerTrainer` (needs the `hf` extra).

Nothing here is imported by `gcl_train` itself: importing an adapter is what pulls in its
framework.
"""
