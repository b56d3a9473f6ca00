"""ffaudit: compliance audit trail and log integrity for face-swap engines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ffaudit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
