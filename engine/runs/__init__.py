"""The run folder and everything about a run's life: file names (RunDir), atomic writes, states,
progress reporting and the background worker. Torch-free: the app imports this package."""
