"""Repository-wide pytest hooks (tests/, book/ and the course notebooks are all collected from here)."""
import pathlib

import pytest

# Notebooks whose printed results sit near rounding level: nbval runs them again, with the `numerics` tests, on
# other kernel paths (`make test-numerics`).
NUMERICS_NOTEBOOKS = {
    "05_computing_phi2.ipynb",
    "06_linearizing_deep_networks.ipynb",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if pathlib.Path(str(item.fspath)).name in NUMERICS_NOTEBOOKS:
            item.add_marker(pytest.mark.numerics)
