"""Precomputed widgets (all chapters): every frame computed and drawn once, switched in the browser by sliders."""
from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Mapping, Sequence

import ipywidgets
import matplotlib.pyplot as plt
from ipywidgets.widgets.widget_string import HTMLStyle
from matplotlib.figure import Figure

__all__ = ["FrameWidget", "precomputed_widget", "png_frame", "FRAME_DPI"]

#: Resolution of widget frames. Every frame is stored in the page (base64 PNG), so this and the grid sizes set
#: the page size: about 15-25 kB a frame at 65 dpi after the 256-colour palette of :func:`png_frame`.
FRAME_DPI = 65

_SLIDER_LAYOUT = ipywidgets.Layout(width="460px")
_SLIDER_STYLE = {"description_width": "170px"}


def png_frame(fig: Figure, dpi: int = FRAME_DPI, colors: int | None = 256) -> bytes:
    """Render ``fig`` to PNG bytes and close it.

    Args:
        fig: a matplotlib figure (closed afterwards, so a loop of frames does not pile up figures).
        dpi: resolution.
        colors: reduce to an adaptive palette of this many colours (line plots, scatter plots and colour maps
            look the same and the file is about four times smaller); ``None`` keeps full RGBA.

    Returns:
        the PNG file's bytes; the same figure gives the same bytes (no time stamp is written).
    """
    buffer = io.BytesIO()
    try:
        # No bbox_inches="tight": it draws the figure twice (ticks dominate the cost), and the book's figures
        # already fit their canvas (constrained or tight layout).
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    finally:
        plt.close(fig)
    if colors is None:
        return buffer.getvalue()
    from PIL import Image

    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    image = image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _decimals(values: Sequence[float], most: int = 6) -> int:
    """Fewest decimals (at least 2, at most ``most``) that write every value exactly (``float(text) == v``)."""
    for d in range(2, most + 1):
        if all(float(f"{v:.{d}f}") == v for v in values):
            return d
    return most


def _grid_labels(name: str, values: tuple, fmt) -> list[str]:
    """Readout labels of one control: ``fmt(v)`` / ``fmt.format(v)`` if given; else ints as ints and floats with
    the fewest common decimals that write each value exactly. Labels must be distinct (they identify frames)."""
    if fmt is None:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            labels = [str(v) for v in values]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            d = _decimals([float(v) for v in values])
            labels = [f"{float(v):.{d}f}" for v in values]
        else:
            labels = [str(v) for v in values]
    elif callable(fmt):
        labels = [fmt(v) for v in values]
    else:
        labels = [fmt.format(v) for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid[{name!r}]: readout labels must be distinct, got {labels}")
    return labels


class FrameWidget(ipywidgets.VBox):
    """Sliders over a grid and the precomputed frame of the selected grid point (see :func:`precomputed_widget`).

    A :class:`ipywidgets.VBox` holding one :class:`ipywidgets.SelectionSlider` per control and then the outermost
    :class:`ipywidgets.Stack`. Python-side attributes (set by :func:`precomputed_widget`):

    - ``names``: the controls, outermost first; ``grid``: ``{name: tuple of values}``;
    - ``sliders``: ``{name: SelectionSlider}`` whose options are ``(readout label, grid value)`` pairs;
    - ``stacks``: one list per control: the Stacks that control switches (``1, n_1, n_1 n_2, ...`` of them);
    - ``links``: the :func:`ipywidgets.jslink` objects, ``(slider, "index") -> (stack, "selected_index")``;
    - ``results``, ``frames``, ``images``: ``{key: ...}`` with ``key`` the tuple of grid values in ``names``
      order: the pure function's dict, the frame widget, and its :class:`ipywidgets.Image`.
    """

    @property
    def values(self) -> dict:
        """The sliders' current values, ``{name: grid value}``."""
        return {name: self.sliders[name].value for name in self.names}

    @property
    def key(self) -> tuple:
        return tuple(self.sliders[name].value for name in self.names)

    @property
    def result(self) -> dict:
        """The pure function's result at the sliders' current values (what the shown frame was drawn from)."""
        return self.results[self.key]

    @property
    def image(self) -> ipywidgets.Image:
        """The frame image at the sliders' current values."""
        return self.images[self.key]


def _in_ipython() -> bool:
    """Whether the code runs in IPython (a notebook's kernel), where a display can be shown and updated."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class _Progress:
    """A one-line note in the running notebook while the frames are drawn, emptied once they are done.

    The note is a display with an id, updated in place; at the end it is updated to empty text, so the saved
    notebook and the HTML page built from it show no leftover line. Outside IPython it does nothing.
    """

    def __init__(self, text: str, total: int):
        self.text, self.total, self.done, self.handle = text, total, 0, None
        if _in_ipython():
            from IPython.display import display

            self.handle = display(self._data(), raw=True, display_id=True)

    def _data(self) -> dict:
        line = f"{self.text}: {self.done} of {self.total} drawn"
        return {"text/plain": line, "text/html": f"<pre>{html.escape(line)}</pre>"}

    def step(self):
        self.done += 1
        if self.handle is not None:
            self.handle.update(self._data(), raw=True)

    def close(self):
        if self.handle is not None:
            self.handle.update({"text/plain": "", "text/html": ""}, raw=True)


def _check_grid(grid, initial, descriptions, formats) -> tuple[list, dict, dict]:
    """``(names, {name: values}, {name: index of the initial value})`` of a widget grid, checked (see
    :func:`precomputed_widget` for the errors)."""
    if not grid:
        raise ValueError("grid must name at least one control")
    names = list(grid)
    values = {name: tuple(grid[name]) for name in names}
    for name, vals in values.items():
        if not vals:
            raise ValueError(f"grid[{name!r}] is empty")
        if len(set(vals)) != len(vals):
            raise ValueError(f"grid[{name!r}] repeats a value: {vals}")
    initial = dict(initial or {})
    descriptions = dict(descriptions or {})
    formats = dict(formats or {})
    for what, mapping in (("initial", initial), ("descriptions", descriptions), ("formats", formats)):
        unknown = set(mapping) - set(names)
        if unknown:
            raise ValueError(f"{what} names controls that are not in grid: {sorted(unknown)}")
    start = {}
    for name in names:
        value = initial.get(name, values[name][0])
        if value not in values[name]:
            raise ValueError(f"initial[{name!r}] = {value!r} is not one of grid[{name!r}] = {values[name]}")
        start[name] = values[name].index(value)
    return names, values, start


def precomputed_widget(
    compute: Callable[..., dict],
    plot: Callable[[dict], Figure],
    grid: Mapping[str, Sequence],
    *,
    initial: Mapping[str, object] | None = None,
    descriptions: Mapping[str, str] | None = None,
    formats: Mapping[str, object] | None = None,
    describe: Callable[[dict], str] | None = None,
    dpi: int = FRAME_DPI,
    colors: int | None = 256,
    title: str = "the widget",
) -> FrameWidget:
    """A widget that answers its sliders with no kernel: every frame precomputed, switched in the browser.

    For every point of the grid (the Cartesian product of ``grid``'s value lists) it calls
    ``result = compute(**point)``, draws ``plot(result)`` to PNG (:func:`png_frame`) and, if ``describe`` is
    given, puts the text ``describe(result)`` under the picture. The frames sit in nested Stacks, one level per
    control; slider ``i``'s ``index`` is :func:`ipywidgets.jslink`-ed to the ``selected_index`` of every Stack of
    level ``i``. Links run in the browser: the saved widget state of an executed notebook is enough for the HTML
    page to swap frames, and in JupyterLab the same widget behaves the same.

    Args:
        compute: pure function of the controls (keyword arguments named as ``grid``'s keys) returning a dict.
        plot: ``plot(result) -> Figure``; the figure is closed after rendering.
        grid: ``{control name: values}``, outermost control first; each list non-empty and free of repeats.
        initial: ``{name: value}`` selected at first (each a grid value); default the first value of each list.
        descriptions: slider descriptions (default: the control names).
        formats: per control, a ``str.format`` pattern or a callable giving the readout label of a value;
            default: the value written exactly (floats with the fewest common decimals).
        describe: optional ``describe(result) -> str``, a few lines of numbers shown under each frame.
        dpi, colors: passed to :func:`png_frame`.
        title: what the frames show, for the note displayed while they are drawn ("precomputing 180 frames
            of <title> ..."); the note is emptied when the widget is built.

    Returns:
        a :class:`FrameWidget`.

    Raises:
        ValueError: empty grid, an empty or repeated value list, an initial value not on the grid, or a control
            name that is not a grid key.
    """
    names, values, start = _check_grid(grid, initial, descriptions, formats)
    initial, descriptions, formats = dict(initial or {}), dict(descriptions or {}), dict(formats or {})

    # One Layout / style object shared by all frames and stacks: each would otherwise be a model of its own in
    # the saved widget state, ~1 kB apiece.
    frame_layout = ipywidgets.Layout()
    stack_layout = ipywidgets.Layout()
    text_style = HTMLStyle()
    sliders = {}
    for name in names:
        labels = _grid_labels(name, values[name], formats.get(name))
        sliders[name] = ipywidgets.SelectionSlider(
            options=list(zip(labels, values[name])), index=start[name], description=descriptions.get(name, name),
            continuous_update=True, layout=_SLIDER_LAYOUT, style=_SLIDER_STYLE,
        )

    results, frames, images = {}, {}, {}
    stacks: list[list[ipywidgets.Stack]] = [[] for _ in names]

    def leaf(key: tuple):
        point = dict(zip(names, key))
        result = compute(**point)
        # No tooltip: html-manager 1.0.6 (the vendored renderer of the HTML book) cannot draw an Image that has one.
        image = ipywidgets.Image(value=png_frame(plot(result), dpi=dpi, colors=colors), format="png",
                                 layout=frame_layout)
        frame = image
        if describe is not None:
            lines = html.escape(describe(result))
            text = ipywidgets.HTML(f"<pre style='margin:0; white-space:pre-wrap'>{lines}</pre>",
                                   layout=frame_layout, style=text_style)
            frame = ipywidgets.VBox([image, text], layout=frame_layout)
        results[key], frames[key], images[key] = result, frame, image
        progress.step()
        return frame

    def level(depth: int, prefix: tuple):
        if depth == len(names):
            return leaf(prefix)
        children = [level(depth + 1, prefix + (v,)) for v in values[names[depth]]]
        stack = ipywidgets.Stack(children, selected_index=start[names[depth]], layout=stack_layout)
        stacks[depth].append(stack)
        return stack

    sizes = [len(values[name]) for name in names]
    shape = " x ".join(f"{len(values[name])} {name}" for name in names)
    progress = _Progress(f"precomputing {math.prod(sizes)} frames of {title} ({shape})", math.prod(sizes))
    try:
        outer = level(0, ())
    finally:
        progress.close()
    links = [ipywidgets.jslink((sliders[name], "index"), (stack, "selected_index"))
             for name, level_stacks in zip(names, stacks) for stack in level_stacks]
    widget = FrameWidget([*sliders.values(), outer])
    widget.names, widget.grid, widget.sliders, widget.stacks, widget.links = names, values, sliders, stacks, links
    widget.results, widget.frames, widget.images = results, frames, images
    return widget


def _on_grid(initial: dict, grid: Mapping[str, Sequence]) -> dict:
    """The builders' preferred starting values, kept only where the (possibly caller-given) grid has them."""
    return {name: value for name, value in initial.items() if value in tuple(grid.get(name, ()))}
