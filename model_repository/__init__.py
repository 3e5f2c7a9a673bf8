"""The Triton model repository: typed configs, Python-backend models, versions, validation."""
