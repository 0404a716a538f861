"""Build shim: the package list, which pyproject.toml cannot express (everything else is there).

`cdiff_jax.configs` is the top-level configs/ folder (package-dir in pyproject.toml), so that the
configs stay where users edit them in a checkout and are importable after a regular install.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["cdiff_jax", "cdiff_jax.*"]) + ["cdiff_jax.configs"])
