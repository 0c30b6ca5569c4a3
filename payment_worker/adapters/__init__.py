"""Adapters: each wraps one library or remote service behind the package's own errors."""
