"""Batching/instances sweep and response-cache study; see plantdx/serving/sweep.py."""

from plantdx.serving.sweep import main

if __name__ == "__main__":
    main()
