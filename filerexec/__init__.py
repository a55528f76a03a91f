"""filerexec: run commands on a host you cannot reach, through a synced folder."""

__version__ = "0.1.0"
