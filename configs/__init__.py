"""Run and model configs as Python files (installed as `cdiff_jax.configs`).

Each file documents how to use it at its top and defines `get_config(arg)`. Load one by
path with `cdiff_jax.configs_io.load_config("configs/released_512.py:codiff")`.
"""
