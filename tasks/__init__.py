"""The pipeline's stages on in-memory data, one module per concept: readers (``lareqa``, ``beir``, ``ingest``,
``tables``), ``batching``, ``training``, ``checkpoints``, ``embedding``, ``indexing``, ``evaluation``,
``comparison`` (statistics between runs) and ``report/``. They import ``hbir.core`` and ``models``, never the
results database, the application or Prefect (the layer contract in pyproject.toml)."""
