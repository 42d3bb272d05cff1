"""Spaces and architectures: the op registry, keys, search spaces, architecture JSON, networks."""
