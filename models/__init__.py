"""Model sources, encoders and losses."""
