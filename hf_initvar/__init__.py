"""Weight-initialization schemes and Q/K/V variance tracking for Hugging Face Transformers."""

from hf_initvar.tracking.callback import VarianceCallback

__all__ = ["VarianceCallback"]
__version__ = "0.1.0"
