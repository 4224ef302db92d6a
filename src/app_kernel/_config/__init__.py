"""Internal helpers that read configuration sources (environment, manifest)."""
