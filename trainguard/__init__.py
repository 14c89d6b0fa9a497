"""trainguard's shared, read-only core: config, job processes, log progress, checkpoints.

Both the exporter and the remediator import from here; this package imports neither,
and never writes to a user's files.
"""

__version__ = "0.1.0"
