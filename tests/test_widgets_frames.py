"""The precomputed-frame machinery behind every widget of the book (:func:`netmoments.widgets.precomputed_widget`).

What makes a widget live in the static HTML book is structure, not Python callbacks: one frame per grid point,
nested Stacks, and a jslink from each slider's ``index`` to the ``selected_index`` of every Stack of its level.
These tests check that structure on the Python objects and in the saved widget state (what the HTML page gets),
and that each frame was computed from the grid values its readouts show. The browser test
(``tests/test_browser.py``) checks the same on the built pages.
"""
from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("agg", force=False)  # tests only: headless; the book itself never touches the backend

import ipywidgets
import matplotlib.pyplot as plt
import pytest
from ipywidgets.embed import embed_data
from PIL import Image

from netmoments import widgets

GRID = {"a": (0.5, 1.25, -2.0), "b": (10, 20)}


def _toy():
    """A pure function that records its calls and a plot that writes its input into the picture."""
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return {"a": a, "b": b, "product": a * b}

    def plot(result):
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.text(0.5, 0.5, f"{result['a']} x {result['b']}", ha="center")
        ax.set_axis_off()
        return fig

    return compute, plot, calls


def _leaf(widget, indices):
    """Walk the nested Stacks from the outermost one by child indices; return the frame reached."""
    node = widget.children[-1]
    for i in indices:
        assert isinstance(node, ipywidgets.Stack)
        node = node.children[i]
    return node


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_one_frame_per_grid_point_computed_at_that_point():
    compute, plot, calls = _toy()
    w = widgets.precomputed_widget(compute, plot, GRID, describe=lambda r: f"product {r['product']}")
    points = list(itertools.product(*GRID.values()))
    assert sorted(calls) == sorted(points)  # each grid point computed exactly once
    assert set(w.results) == set(w.frames) == set(w.images) == set(points)
    for (i, a), (j, b) in itertools.product(enumerate(GRID["a"]), enumerate(GRID["b"])):
        frame = _leaf(w, (i, j))
        assert frame is w.frames[a, b]
        assert w.results[a, b] == {"a": a, "b": b, "product": a * b}
        image, text = frame.children  # a frame with a description: the picture, then the numbers
        assert image is w.images[a, b]
        assert f"product {a * b}" in text.value
        # the picture is the plot of that very result (rendering is deterministic)
        assert image.value == widgets.png_frame(plot({"a": a, "b": b}))
        assert image.format == "png"
    assert len({img.value for img in w.images.values()}) == len(points)


def test_readouts_write_the_grid_values_exactly():
    compute, plot, _ = _toy()
    w = widgets.precomputed_widget(compute, plot, GRID, descriptions={"a": "alpha"},
                                   formats={"b": "b = {}"})
    slider_a, slider_b = w.children[:2]
    assert isinstance(slider_a, ipywidgets.SelectionSlider) and slider_a.description == "alpha"
    labels = [label for label, _ in slider_a.options]
    assert labels == ["0.50", "1.25", "-2.00"]
    assert [float(label) for label in labels] == list(GRID["a"])
    assert [label for label, _ in slider_b.options] == ["b = 10", "b = 20"]
    assert [value for _, value in slider_b.options] == list(GRID["b"])
    one = widgets.precomputed_widget(lambda x: compute(x, 1), plot, {"x": (0.125, 1.0)})
    assert [label for label, _ in one.sliders["x"].options] == ["0.125", "1.000"]


def test_each_slider_is_linked_to_every_stack_of_its_level():
    compute, plot, _ = _toy()
    w = widgets.precomputed_widget(compute, plot, GRID)
    outer = w.children[-1]
    assert [len(level) for level in w.stacks] == [1, 3]
    assert w.stacks[0] == [outer]
    assert w.stacks[1] == list(outer.children)
    links = {(id(link.source[0]), link.source[1], id(link.target[0]), link.target[1]) for link in w.links}
    expected = {(id(w.sliders["a"]), "index", id(outer), "selected_index")}
    expected |= {(id(w.sliders["b"]), "index", id(stack), "selected_index") for stack in outer.children}
    assert links == expected
    assert all(type(link).__name__ == "Link" and link._model_name == "LinkModel" for link in w.links)  # jslink: runs in the browser


def test_saved_state_holds_frames_stacks_and_links():
    """What the HTML page receives: every model the links and stacks refer to, and one PNG per grid point."""
    compute, plot, _ = _toy()
    w = widgets.precomputed_widget(compute, plot, GRID)
    # The saved state holds every widget alive in the kernel (links are nobody's children); keep this widget's.
    state = embed_data(views=[w])["manager_state"]["state"]
    ours = {x.model_id for x in [*w.sliders.values(), *w.images.values(), *w.links]}
    ours |= {s.model_id for level in w.stacks for s in level}
    models = {key: entry["model_name"] for key, entry in state.items() if key in ours}
    assert len(models) == len(ours)
    link_states = [state[key]["state"] for key, name in models.items() if name == "LinkModel"]
    assert len(link_states) == 1 + 3
    slider_ids = {w.sliders[name].model_id: name for name in GRID}
    targets = {name: set() for name in GRID}
    for link in link_states:
        (src_model, src_attr), (dst_model, dst_attr) = link["source"], link["target"]
        assert src_attr == "index" and dst_attr == "selected_index"
        targets[slider_ids[src_model.removeprefix("IPY_MODEL_")]].add(dst_model.removeprefix("IPY_MODEL_"))
    assert targets == {"a": {w.children[-1].model_id}, "b": {s.model_id for s in w.stacks[1]}}
    assert all(models[t] == "StackModel" for level in targets.values() for t in level)
    images = [state[key] for key, name in models.items() if name == "ImageModel"]
    assert len(images) == 6 and all(len(img["buffers"]) == 1 for img in images)  # the PNG, base64 in the page


def test_initial_selection_and_result_follow_the_sliders():
    compute, plot, _ = _toy()
    w = widgets.precomputed_widget(compute, plot, GRID, initial={"a": 1.25, "b": 20})
    assert w.sliders["a"].index == 1 and w.sliders["b"].index == 1
    assert w.children[-1].selected_index == 1 and all(s.selected_index == 1 for s in w.stacks[1])
    assert w.result == {"a": 1.25, "b": 20, "product": 25.0}
    w.sliders["a"].value = -2.0
    assert w.values == {"a": -2.0, "b": 20} and w.result["product"] == -40.0
    assert w.image is w.images[-2.0, 20]


def test_one_control_is_a_single_stack():
    compute, plot, _ = _toy()
    w = widgets.precomputed_widget(lambda a: compute(a, 1), plot, {"a": (1.0, 2.0)})
    assert len(w.children) == 2 and [len(s) for s in w.stacks] == [1] and len(w.links) == 1
    assert isinstance(_leaf(w, (1,)), ipywidgets.Image)


@pytest.mark.parametrize("grid, kwargs, match", [
    ({}, {}, "at least one control"),
    ({"a": ()}, {}, "empty"),
    ({"a": (1.0, 1.0)}, {}, "repeats"),
    ({"a": (1.0, 2.0)}, {"initial": {"a": 3.0}}, "not one of"),
    ({"a": (1.0, 2.0)}, {"descriptions": {"z": "zeta"}}, "not in grid"),
    ({"a": (1.0, 1.2)}, {"formats": {"a": "{:.0f}"}}, "distinct"),
])
def test_bad_grids_are_rejected(grid, kwargs, match):
    compute, plot, _ = _toy()
    with pytest.raises(ValueError, match=match):
        widgets.precomputed_widget(lambda **kw: compute(1, 1), plot, grid, **kwargs)


def test_png_frame_is_a_closed_deterministic_png():
    def figure():
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [0, 1, 0])
        return fig

    fig = figure()
    data = widgets.png_frame(fig, dpi=50)
    assert not plt.fignum_exists(fig.number)
    assert data == widgets.png_frame(figure(), dpi=50)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "P"  # the 256-colour palette
    assert 100 <= image.size[0] <= 3 * 50 and image.size[1] <= 2 * 50
    full = Image.open(io.BytesIO(widgets.png_frame(figure(), dpi=50, colors=None)))
    assert full.mode in ("RGB", "RGBA")


def test_the_precompute_note_counts_frames_and_is_emptied(monkeypatch):
    """In a notebook, a note says what is being drawn while the frames are computed, and is emptied afterwards
    (the saved notebook and the HTML page keep no leftover line)."""
    import IPython.display

    shown = []

    class Handle:
        def update(self, data, raw=False):
            assert raw
            shown.append(data["text/plain"])

    def display(data, raw=False, display_id=False):
        assert raw and display_id
        shown.append(data["text/plain"])
        return Handle()

    monkeypatch.setattr(widgets._frames, "_in_ipython", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    compute, plot, calls = _toy()
    widgets.precomputed_widget(compute, plot, GRID, title="a toy")
    assert len(calls) == 6
    assert shown[0] == "precomputing 6 frames of a toy (3 a x 2 b): 0 of 6 drawn"
    assert shown[1:-1] == [f"precomputing 6 frames of a toy (3 a x 2 b): {k} of 6 drawn" for k in range(1, 7)]
    assert shown[-1] == ""


def test_the_precompute_note_is_emptied_when_a_frame_fails(monkeypatch):
    import IPython.display

    last = {}

    class Handle:
        def update(self, data, raw=False):
            last["text"] = data["text/plain"]

    monkeypatch.setattr(widgets._frames, "_in_ipython", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda data, raw=False, display_id=False: Handle())

    def compute(a, b):
        raise RuntimeError("broken frame")

    with pytest.raises(RuntimeError, match="broken frame"):
        widgets.precomputed_widget(compute, lambda r: plt.figure(), GRID)
    assert last["text"] == ""


def test_no_note_outside_ipython(monkeypatch):
    import IPython.display

    monkeypatch.setattr(widgets._frames, "_in_ipython", lambda: False)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: pytest.fail("displayed outside IPython"))
    compute, plot, calls = _toy()
    widgets.precomputed_widget(compute, plot, GRID)
    assert len(calls) == 6
