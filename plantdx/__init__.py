"""plantdx: plant-disease image classification, from leaf photos to a Triton ensemble."""

__version__ = "0.1.0"
