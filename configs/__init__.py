"""Run and model configs as Python files (installed as `cdiff_jax.configs`).

Each file documents how to use it at its top and defines `get_config(arg)`. Load one by
path or by name with `cdiff_jax.config.load_config("configs/released.py:512_codiff")`.
"""
