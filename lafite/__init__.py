"""lafite-repro: a reproduction suite for LAFITE."""
__version__ = "0.1.0"
