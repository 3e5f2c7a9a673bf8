"""Preprocessing cost vs. Pillow decoding alone; see plantdx/serving/preprocess_bench.py."""

from plantdx.serving.preprocess_bench import main

if __name__ == "__main__":
    main()
