"""Repository-wide pytest hooks (tests/, book/ and the course notebooks are all collected from here)."""
import pathlib

import pytest

# Notebooks that check results at rounding level (they print fixed bounds, asserted in the same cell, never the
# round-off digits themselves: tests/test_notebook_outputs.py): nbval runs them again, with the `numerics` tests, on
# other kernel paths (`make test-numerics`).
NUMERICS_NOTEBOOKS = {
    "02_one_relu_one_gaussian.ipynb",
    "03_two_relus_the_cross_moment.ipynb",
    "05_computing_phi2.ipynb",
    "06_linearizing_deep_networks.ipynb",
    "A1_phi2_quadrature.ipynb",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if pathlib.Path(str(item.fspath)).name in NUMERICS_NOTEBOOKS:
            item.add_marker(pytest.mark.numerics)
