"""The project's exception types, in one place.

Every one is a ValueError whose message names the key or file, the value and what is
allowed, so the CLI can print it as one line and exit with status 2 before any compute.
"""
from __future__ import annotations


class DDBenchError(ValueError):
    """Base of every error the CLI turns into a one-line message and exit status 2."""


class ConfigError(DDBenchError):
    """A bad configuration value: the message names the key, the value and what is allowed."""


class DataError(DDBenchError):
    """Data that is missing, corrupt or not in the expected layout; the message says how to fix it."""


class CheckpointError(DDBenchError):
    """A checkpoint or resume state that is missing, corrupt or inconsistent; the message says how to fix it."""


class SampleError(DDBenchError):
    """Bad input to the sample stage; the message names the key, the value and what is allowed."""


class NonFiniteError(DDBenchError):
    """A NaN or inf appeared in the sampler state; the message names the sampler and the step."""


class FIDError(DDBenchError):
    """Bad input to a FID stage (missing weights, stale stats, wrong feature space): the message says how to fix it."""


class RecordError(DDBenchError):
    """A run record is missing, unreadable, lacks a required field or contradicts another."""


class ReferenceDataError(DDBenchError):
    """The bundled reference data are inconsistent (a broken edit of papers.yaml or a CSV)."""
