"""What people decide and take away: the decision store, the export of corrected labels, and the
detection metrics against a truth file. Torch-free: the app imports this package."""
