"""certwatch: TLS certificate expiry monitor."""

__version__ = "0.1.0"
