"""Compression: quantize, prune, optimize (compile / dtype / memory format)."""
