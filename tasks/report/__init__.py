"""Reports: a run's (``run.py``) and a study's results document (``study.py``: data, claims, plots, markdown)."""
