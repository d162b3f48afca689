"""raygate: a Jupyter kernel gateway that runs kernels as Ray actors and beyond."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raygate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
