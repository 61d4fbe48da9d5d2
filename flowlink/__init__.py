"""flowlink: a self-hosted automation engine."""

__version__ = "0.1.0"
