"""Triton statistics and CPU per served image; see plantdx/serving/profile.py."""

from plantdx.serving.profile import main

if __name__ == "__main__":
    main()
