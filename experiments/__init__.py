"""Reproductions. Each subpackage is one paper's experiment (see lgrad.engine.registry)."""
