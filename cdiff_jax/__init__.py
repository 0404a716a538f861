"""cdiff_jax: Collaborative Diffusion (Huang et al., CVPR 2023) in JAX and Flax NNX."""

__version__ = "0.1.0"
