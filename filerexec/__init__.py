"""filerexec: run commands on a host you cannot reach, through a synced folder."""

__version__ = "0.1.0"
APP = "filerexec"  # the one spelling of the name: config folders, temp files, markers
