"""cdiff_jax: Collaborative Diffusion (Huang et al., CVPR 2023) in JAX/Flax NNX."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent


def files_under(package: str, folder: str) -> list[str]:
    """Every file below a package's data folder (orbax checkpoints nest several levels), package-relative."""
    root = HERE / package.replace(".", "/")
    return [str(f.relative_to(root)) for f in sorted((root / folder).rglob("*")) if f.is_file()]


setup(
    name="cdiff_jax",
    version="0.1.0",
    description="Collaborative Diffusion for multi-modal face generation and editing, in JAX/Flax",
    python_requires=">=3.12",
    packages=find_packages(include=["cdiff_jax", "cdiff_jax.*"]) + ["cdiff_jax.configs"],
    package_dir={"cdiff_jax.configs": "configs"},
    package_data={
        "cdiff_jax.text": ["vocab/*"],
        "cdiff_jax.data": ["examples/*"],
        "cdiff_jax": files_under("cdiff_jax", "demo_models"),  # the trained demo system
        "cdiff_jax.evaluation": files_under("cdiff_jax.evaluation", "judges_toy"),  # the evaluation's judges
    },
    install_requires=[
        "jax[cpu]==0.12.*",
        "flax==0.12.*",
        "optax==0.2.*",
        "orbax-checkpoint==0.12.*",
        "grain==0.2.*",
        "tensorflow-datasets==4.9.*",
        "transformers==5.*",
        "safetensors>=0.4",
        "numpy>=2.0",
        "pillow>=10",
        "pyyaml>=6",
    ],
    extras_require={"dev": ["pytest>=8", "pytest-xdist>=3.5", "scipy>=1.11"]},
)
