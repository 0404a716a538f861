"""Command-line programs, one module each; `cdiff` (main.py) dispatches to them."""
