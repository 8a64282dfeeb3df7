"""Where the checkout and its model folders are: the one place that knows."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
