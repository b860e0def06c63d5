"""Fuzz targets for the two readers that parse untrusted bytes (see docs/reliability.md)."""
