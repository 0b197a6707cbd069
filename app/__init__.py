"""alexnet-serve: a REST service for AlexNet on onnxruntime."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alexnet-serve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
