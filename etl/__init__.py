"""vox-etl: keep a SQL warehouse in exact, up-to-date sync with the Vox voice API's call records."""

# The one place the version is written: pyproject.toml reads it from here (setuptools' dynamic
# version), so no command pays for importlib.metadata (about 30 ms of start-up) to learn it.
__version__ = "0.1.0"
