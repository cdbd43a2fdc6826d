"""hmsa_jax: Hierarchical Multi-Scale Attention for semantic segmentation in JAX/Flax."""
from hmsa_jax.models import count_params, create_model, list_models, make_predict_fn

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "count_params", "make_predict_fn", "__version__"]
