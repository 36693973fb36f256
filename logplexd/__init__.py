"""logplexd: a Logplex-compatible log router with a Cython hot path."""

__version__ = "0.1.0"
