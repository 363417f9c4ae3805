"""spacesim: load-test and simulate live audio rooms from one scenario and one record schema."""

from importlib import metadata

try:
    __version__ = metadata.version("spacesim")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
