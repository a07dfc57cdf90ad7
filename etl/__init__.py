"""vox-etl: keep a SQL warehouse in exact, up-to-date sync with the Vox voice API's call records."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vox-etl")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
