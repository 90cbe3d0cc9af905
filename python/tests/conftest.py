"""Shared fixtures: the bundled models and the `qlift` command line to compare with.

QLIFT_CLI names the CLI binary (build_and_test.sh builds it in release and sets it); without
it the tests look for target/release/qlift beside this checkout.
"""

import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"


def cli_path() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("QLIFT_CLI", ROOT / "target" / "release" / "qlift"))
    if not path.exists():
        pytest.fail(f"the qlift CLI is not at {path}: build it (cargo build --release -p qlift) or set QLIFT_CLI")
    return path


@pytest.fixture(scope="session")
def cli():
    """Runs the qlift CLI with arguments; returns its standard output (fails on an error)."""
    path = cli_path()

    def run(*args):
        done = subprocess.run([str(path), *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, f"qlift {' '.join(map(str, args))} failed:\n{done.stderr}"
        return done.stdout

    return run


@pytest.fixture(scope="session")
def data():
    """The bundled test and calibration sets."""
    load = lambda name: np.load(MODELS / name)
    return {
        "x": load("digits_test_x.npy"),
        "x_flat": load("digits_test_x_flat.npy"),
        "y": load("digits_test_y.npy"),
        "calib": load("digits_calib_x.npy"),
        "calib_flat": load("digits_calib_x_flat.npy"),
    }


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtypes, shapes and bytes (NaNs and signed zeros included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
