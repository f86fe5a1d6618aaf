"""hbir: hybrid-batch multilingual dense retrieval, from validated data to results in DuckDB."""

__version__ = "0.1.0"
