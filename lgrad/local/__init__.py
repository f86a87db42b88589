"""Layer-local learning rules (each block learns from its own local loss)."""

__all__: list[str] = []
