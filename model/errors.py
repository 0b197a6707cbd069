"""Expected failures of the model tools, each with a message that says what to do next.

The CLI prints these as one line without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ModelToolError(Exception):
    """Base class for failures the user can fix (missing file, bad file, no network)."""


class WeightsUnavailableError(ModelToolError):
    """The weights file is neither cached nor downloadable; the message says where to get it."""


class WeightsFormatError(ModelToolError):
    """A weights file is truncated, has the wrong layout or shapes, or holds forbidden pickle code."""


class WeightsHashError(ModelToolError):
    """A weights file's digest differs from the pinned release."""


class VerificationError(ModelToolError):
    """The exported ONNX model disagrees with the numpy reference, or cannot be checked at all."""
