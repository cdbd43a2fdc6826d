"""hmsa_jax: Hierarchical Multi-Scale Attention for semantic segmentation in JAX/Flax."""
from hmsa_jax.models import count_params, create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "count_params", "__version__"]
