"""plantdx stage."""
