"""Train a model from a config file: the same as `stance train`, for scripts and schedulers.

    python scripts/train.py --config models/default.yaml [--set training.epochs=3 ...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stance.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    main()
