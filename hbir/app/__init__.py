"""The application: the one composition of the stages as plain functions (``stages``, ``pipeline``), run records
(``records``), the study, scheduled retraining, comparisons and what the commands print. It imports every layer
below it and never ``flows`` or the CLI."""
