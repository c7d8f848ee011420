"""Single source of the SDK version (read by pyproject.toml, sent in the gRPC user agent)."""

__version__ = "0.1.0"
