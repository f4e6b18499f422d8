"""stance: stance detection for reactions to US military action against drug cartels."""
__version__ = "0.1.0"

from .labels import LABELS  # noqa: E402
from .model import StanceClassifier, classify  # noqa: E402

__all__ = ["LABELS", "StanceClassifier", "classify", "__version__"]
