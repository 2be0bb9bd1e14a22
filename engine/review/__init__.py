"""What people decide and take away: the decision store, its memory across runs (by image sha256),
decisions out and back in, the export of corrected labels, and the detection metrics against a truth
file. Torch-free: the app imports this package."""
