"""ruststash: a caching, TLS-intercepting proxy for cargo and rustup traffic."""

__version__ = "0.1.0"
