"""Plumbing every layer may use: errors, atomic files, console output, provenance. Imports nothing
else from `pipeline`."""
