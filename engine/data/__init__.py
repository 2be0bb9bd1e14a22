"""Images in: intake of folders, zips and CSV manifests, safe extraction, decoding, the decoded cache,
and the label-noise simulator. Torch-free: the app imports this package."""
