"""The results database (DuckDB), on top of ``hbir.core``: schema and migrations (``schema``), opening it
(``database``), runs and their training steps (``runs``), the model registry (``registry``) and reads (``query``).
Every value goes into SQL as a parameter."""
