"""The paper's method: the network, the losses, the augmentations, the mixture split and the map.
Imports torch (and scikit-learn, umap): only the worker process loads it, never the app."""
