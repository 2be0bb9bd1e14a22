"""Training: device and precision, the resident training set, the epoch loop and its checkpoints,
the stages of a run. Imports torch: only the worker process loads it, never the app."""
