"""Shared checks of the book's precomputed widgets (imported by tests/test_widgets*.py)."""
from __future__ import annotations

import itertools


def check_frames(w, grid: dict, descriptions: list[str]) -> set[tuple]:
    """The widget has one slider per grid control (with these descriptions, offering exactly the grid values, in
    order), one frame per grid point, and no two frames alike; returns the grid points."""
    assert list(w.grid) == list(grid)
    assert [w.sliders[n].description for n in grid] == descriptions
    for name, values in grid.items():
        assert [value for _, value in w.sliders[name].options] == list(values)
    points = set(itertools.product(*grid.values()))
    assert set(w.results) == set(w.images) == set(w.frames) == points
    assert len({img.value for img in w.images.values()}) == len(points)  # every frame drawn from its own point
    assert len(w.links) == sum(len(level) for level in w.stacks)
    return points
