"""The package version (its own module, so recording it imports nothing else)."""

__version__ = "0.1.0"
