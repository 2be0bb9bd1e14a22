"""CLeaN engine: find and fix mislabeled images with contrastive learning.

Importing `engine` loads nothing heavy: the torch-free modules (config, runs, decisions, jobs,
intake, export) are what the app imports; training modules are imported inside the worker process.
Command line: `python -m engine --help`.
"""

__version__ = "0.1.0"
