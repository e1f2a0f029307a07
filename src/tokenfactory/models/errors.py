"""Errors a user can cause when choosing or loading a model: each one says what went wrong."""


class ModelLoadError(Exception):
    """Base class: the model could not be loaded."""


class ModelNotFoundError(ModelLoadError):
    """The path names no file or directory."""


class CorruptModelError(ModelLoadError):
    """The file exists but is not a readable model (truncated, not GGUF, bad tensors)."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model is of an architecture this engine does not implement."""


class UnsupportedQuantizationError(ModelLoadError):
    """A tensor is stored in a quantization type this engine cannot dequantize."""


class ModelTooLargeError(ModelLoadError):
    """The model's weights do not fit in the memory available."""
