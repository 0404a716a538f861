"""Shared test fixtures: the reference fixture root and a relative-error helper."""

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def reference_root() -> pathlib.Path:
    """Root of the official-code fixtures (CDIFF_REFERENCE_FIXTURES, default ../shared/fixtures)."""
    root = os.environ.get("CDIFF_REFERENCE_FIXTURES", str(REPO.parent / "shared" / "fixtures"))
    return pathlib.Path(root)


@pytest.fixture(scope="session")
def fixtures_root() -> pathlib.Path:
    root = reference_root()
    if not (root / "manifest.json").exists():
        raise FileNotFoundError(
            f"reference fixtures not found at {root}; set CDIFF_REFERENCE_FIXTURES to the fixture root"
        )
    return root


def assert_close_rel(actual, expected, tol=1e-5, name="array"):
    """max|actual - expected| / max|expected| <= tol, the parity criterion of the project."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(actual - expected).max() / scale
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"
