"""Chapter 1 opened in a real JupyterLab (headless Chromium), the way ``make lab`` serves it to a student.

One JupyterLab server is started from the venv on a free port, with the project's lab settings
(``jupyterlab/overrides.json``: the widget manager leaves the saved widget state alone, no news pop-up;
``jupyterlab/config``: nbgrader's menu, buttons and server extensions off) and an isolated Jupyter config, data and
runtime folder, so nothing of the user's own Jupyter set-up leaks in or is changed. Chapter 1 is a trusted copy in a temporary folder. The tests fail
when

- a markdown cell shows MyST source as text (``:::{admonition}``, ``{doc}``, ``{cite}``, ``:label:``, ...), that is
  when jupyterlab-myst is missing or broken;
- a solution is unfolded (its body visible before its summary is clicked);
- the saved widget shows as ``FrameWidget(...)`` text (the notebook is not trusted) or never loads;
- nbgrader's menu, Validate button or "No nbgrader_config.py" message appears;
- with the kernel shut down, dragging a slider does not swap the picture for another saved frame;
- saving the notebook loses the saved widget state (the widget manager's ``saveState`` setting is on: it would
  replace the precomputed state by the empty state of the kernel's widgets).

Needs Chromium (``apt-get install -y chromium``) and Playwright; without them the module is skipped with a reason,
unless ``NETMOMENTS_BROWSER_TEST=required`` (set by ``make test`` when Chromium is present). Screenshots go to
``_build/screenshots/``.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "01_gaussians_through_affine_layers.ipynb"
SHOTS = ROOT / "_build" / "screenshots"
REQUIRED = os.environ.get("NETMOMENTS_BROWSER_TEST") == "required"
CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
JUPYTER = Path(sys.executable).parent / "jupyter"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# MyST source that must never reach the reader as text once jupyterlab-myst renders the cell.
RAW_MYST = re.compile(r":::\{|```\{|\{(doc|ref|cite|cite:p|cite:t|eq|numref|math)\}`|^:(label|class):", re.M)
# Seconds for the server to answer (about 5 on an idle 2-core machine).
START_TIMEOUT_S = 60


def _skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"JupyterLab browser test required but {reason}", pytrace=False)
    pytest.skip(f"SKIP JupyterLab browser test: {reason}", allow_module_level=True)


if CHROMIUM is None:
    _skip_or_fail("no Chromium found (apt-get install -y chromium)")
if importlib.util.find_spec("playwright") is None:
    _skip_or_fail("playwright is not installed (pip install -r requirements.txt)")
if not JUPYTER.exists():
    _skip_or_fail(f"no jupyter next to {sys.executable} (make setup)")
if importlib.util.find_spec("jupyterlab_myst") is None:
    _skip_or_fail("jupyterlab-myst is not installed (make setup)")

from playwright.sync_api import sync_playwright  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf8")


def _saved_frames(notebook: Path) -> set[bytes]:
    """The PNG bytes of every Image model in the notebook's saved widget state."""
    state = json.loads(notebook.read_text(encoding="utf8"))["metadata"]["widgets"][WIDGET_STATE]["state"]
    frames = set()
    for model in state.values():
        if model["model_name"] == "ImageModel":
            for buffer in model.get("buffers", []):
                if buffer["path"] == ["value"]:
                    frames.add(base64.b64decode(buffer["data"]))
    return frames


class Lab:
    """A JupyterLab server on 127.0.0.1 serving one folder, with isolated Jupyter folders; ``stop`` ends it and
    its kernels (the whole process group)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.work = tmp / "work"
        self.work.mkdir()
        shutil.copy(ROOT / "book" / CHAPTER, self.work / CHAPTER)
        # The project's lab settings, as `make setup` installs them into the venv's app settings folder.
        settings = tmp / "app-settings"
        settings.mkdir()
        shutil.copy(ROOT / "jupyterlab" / "overrides.json", settings / "overrides.json")
        # Test-only user setting: render every cell (JupyterLab 4 otherwise attaches only the cells near the
        # viewport, and the checks below read the whole notebook).
        user = tmp / "user-settings"
        _write_json(user / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"windowingMode": "none"})
        self.env = dict(os.environ,
                        JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
                        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
                        JUPYTER_CONFIG_PATH=str(ROOT / "jupyterlab" / "config"))
        for name in ("JUPYTER_PREFER_ENV_PATH", "JUPYTER_PATH"):
            self.env.pop(name, None)
        # Trust signs with a key in JUPYTER_DATA_DIR, which the server below reads too.
        subprocess.run([str(JUPYTER), "trust", str(self.work / CHAPTER)], env=self.env, check=True,
                       capture_output=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(JUPYTER), "lab", "--allow-root", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
                 "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.port_retries=0",
                 # the REST calls below (shutting the kernel down) come without the browser's XSRF cookie
                 "--ServerApp.disable_check_xsrf=True",
                 f"--ServerApp.root_dir={self.work}", f"--LabApp.app_settings_dir={settings}",
                 f"--LabApp.user_settings_dir={user}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise AssertionError(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def api(self, path: str, method: str = "GET"):
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}{path}", method=method), timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(encoding="utf8", errors="replace")[-n:]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def notebook(lab):
    """Chapter 1 open in JupyterLab, every markdown cell rendered and the saved widget drawn (or the wait for it
    timed out: the widget test reports what was shown instead)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(lab.url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", route)
            console: list[str] = []
            page.on("console", lambda m: m.type == "error" and console.append(m.text[:300]))
            page.on("pageerror", lambda err: console.append(str(err)[:300]))
            page.goto(f"{lab.url}/lab/tree/{CHAPTER}", wait_until="load")
            source = json.loads((lab.work / CHAPTER).read_text(encoding="utf8"))
            n_markdown = sum(c["cell_type"] == "markdown" for c in source["cells"])
            page.wait_for_function(
                "(n) => document.querySelectorAll('.jp-Notebook .jp-MarkdownCell').length === n",
                arg=n_markdown, timeout=60_000)
            try:
                # the widget manager restores the saved state once the kernel has started: ~20 s on an idle
                # 2-core machine, over a minute on a busy one
                page.wait_for_selector(".jp-OutputArea-output .widget-slider .noUi-handle", timeout=120_000)
            except Exception as err:  # noqa: BLE001 - the widget test says what the output shows instead
                console.append(f"waiting for the widget: {err}"[:300])
            page.screenshot(path=str(SHOTS / "jupyterlab-ch1-top.png"))
            yield page, source, outside, console
        finally:
            browser.close()


def _visible_markdown(page) -> list[str]:
    return page.eval_on_selector_all(".jp-Notebook .jp-MarkdownCell .jp-Cell-inputWrapper",
                                     "els => els.map(e => e.innerText)")


def test_myst_is_rendered_not_shown_as_source(notebook):
    page, source, _, _ = notebook
    texts = _visible_markdown(page)
    markdown = [c for c in source["cells"] if c["cell_type"] == "markdown"]
    assert len(texts) == len(markdown)
    # the source itself is full of MyST: the check below can only pass when it is rendered
    assert any(RAW_MYST.search("".join(c["source"])) for c in markdown)
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    assert not empty, f"markdown cells {empty} show nothing"
    raw = [(i, m.group(0), t[max(0, m.start() - 60):m.end() + 60])
           for i, t in enumerate(texts) for m in [RAW_MYST.search(t)] if m]
    assert not raw, f"MyST source shown as text in JupyterLab (is jupyterlab-myst installed?): {raw[:3]}"
    # `:label:`ed display equations come out numbered
    labelled = sum(len(re.findall(r"```\{math\}\s*\n:label:", "".join(c["source"]))) for c in markdown)
    numbers = page.eval_on_selector_all(".jp-Notebook .jp-MarkdownCell",
                                        "els => els.map(e => e.innerText).join('\\n')")
    assert len(re.findall(r"\(\d+\)", numbers)) >= labelled, f"fewer than {labelled} equation numbers shown"


def test_solutions_are_folded(notebook):
    page, source, _, _ = notebook
    markdown = "".join("".join(c["source"]) for c in source["cells"] if c["cell_type"] == "markdown")
    expected = len(re.findall(r"```\{solution\}", markdown))
    assert expected, "chapter 1 has no solutions to check"
    folds = page.eval_on_selector_all(
        ".jp-Notebook .jp-MarkdownCell details",
        """els => els.map(d => ({
            open: d.open,
            summary: d.querySelector('summary') ? d.querySelector('summary').innerText : '',
            bodyVisible: Array.from(d.children).filter(c => c.tagName !== 'SUMMARY')
                              .some(c => c.checkVisibility() && c.innerText.trim() !== ''),
        }))""")
    solutions = [f for f in folds if "Solution" in f["summary"]]
    assert len(solutions) == expected, f"{len(solutions)} folded solution boxes for {expected} solutions: {folds}"
    shown = [f["summary"] for f in solutions if f["open"] or f["bodyVisible"]]
    assert not shown, f"solutions visible without a click: {shown}"
    # one click opens the first: the visibility check above can see a body when there is one
    first = page.locator(".jp-Notebook .jp-MarkdownCell details > summary").first
    first.scroll_into_view_if_needed()
    first.click()
    assert page.locator(".jp-Notebook .jp-MarkdownCell details").first.evaluate(
        "d => d.open && Array.from(d.children).some(c => c.tagName !== 'SUMMARY' && c.checkVisibility())")
    first.click()


def test_no_nbgrader_in_the_book_session(notebook, lab):
    page, _, _, _ = notebook
    menus = page.eval_on_selector_all("#jp-MainMenu .lm-MenuBar-itemLabel", "els => els.map(e => e.innerText)")
    assert "File" in menus, f"no main menu found: {menus}"
    assert not [m for m in menus if "nbgrader" in m.lower()], f"nbgrader's menu is shown: {menus}"
    text = page.inner_text("body")
    assert "nbgrader_config.py" not in text
    toolbar = page.eval_on_selector_all(".jp-NotebookPanel-toolbar", "els => els.map(e => e.innerText)")
    assert not any("Validate" in t for t in toolbar), f"nbgrader's Validate button is shown: {toolbar}"
    assert lab.status("/formgrader") == 404, "nbgrader's formgrader server extension is loaded"


SHOWN_PNG = """async (area) => {
    const imgs = Array.from(area.querySelectorAll('img')).filter(i => i.checkVisibility());
    if (imgs.length !== 1) return {count: imgs.length};
    const bytes = new Uint8Array(await (await fetch(imgs[0].src)).arrayBuffer());
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return {count: 1, data: btoa(text)};
}"""


def _shown_png(area) -> bytes:
    shown = area.evaluate(SHOWN_PNG)
    assert shown["count"] == 1, f"{shown['count']} pictures visible in the widget (expected exactly one frame)"
    return base64.b64decode(shown["data"])


def _drag_to_other_end(page, output, k: int, shown: bytes, frames: set[bytes]) -> bytes:
    """Drag slider ``k``'s handle with the mouse to the end of its track away from where it sits; check that the
    readout moves and the picture becomes another saved frame, and return that frame."""
    slider = output.locator(".widget-slider").nth(k)
    slider.scroll_into_view_if_needed()
    handle = slider.locator(".noUi-handle")
    now, top = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemax"))
    fraction = 0.0 if now == top else 1.0
    readout = slider.locator(".widget-readout")
    before = readout.inner_text().strip()
    box, track = handle.bounding_box(), slider.locator(".noUi-base").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], y, steps=12)
    page.mouse.up()
    page.wait_for_function("([el, old]) => el.innerText.trim() !== old", arg=[readout.element_handle(), before],
                           timeout=10_000)
    deadline = time.monotonic() + 5  # the Stack redraws a moment after the readout moves
    while (now_png := _shown_png(output)) == shown and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert now_png != shown, f"dragging slider {k} from {before} to its other end left the picture as it was"
    assert now_png in frames, f"after dragging slider {k} the picture is not one of the saved frames"
    return now_png


def _readouts(output) -> dict[str, str]:
    labels = output.locator(".widget-slider .widget-label").all_inner_texts()
    values = output.locator(".widget-slider .widget-readout").all_inner_texts()
    return {k.strip(): v.strip() for k, v in zip(labels, values)}


def test_saved_widget_answers_its_sliders_without_a_kernel(notebook, lab):
    page, source, outside, console = notebook
    path = lab.work / CHAPTER
    widget_outputs = [(i, k) for i, c in enumerate(source["cells"]) for k, o in enumerate(c.get("outputs", []))
                      if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_outputs, "chapter 1 has no saved widget output"
    cell_index, output_index = widget_outputs[0]
    cell = page.locator(".jp-Notebook .jp-Cell").nth(cell_index)
    cell.scroll_into_view_if_needed()
    output = cell.locator(".jp-OutputArea-output").nth(output_index)
    try:
        output.locator(".widget-slider").first.wait_for(timeout=60_000)
    except Exception:  # noqa: BLE001 - reported below with what the output shows
        pass
    shown_text = output.inner_text()
    assert "FrameWidget(" not in shown_text, (
        f"the widget shows as text (notebook not trusted?): {shown_text[:200]!r}")
    assert output.locator(".widget-slider").count() > 0, (
        f"the saved widget was not restored; the output shows {shown_text[:200]!r} "
        f"({output.inner_html()[-600:]!r}); page messages: {[m for m in console if 'Cross reference' not in m][-8:]}")
    # Nothing was executed, and the restored widgets have no comm to the kernel ("disconnected"): what answers the
    # sliders below is the front end alone (the jslinks between sliders and Stacks in the saved state).
    assert not [p for p in page.eval_on_selector_all(".jp-InputPrompt", "els => els.map(e => e.innerText)")
                if "*" in p], "a cell is running"
    assert output.locator(".widget-slider.jupyter-widgets-disconnected").count() == \
        output.locator(".widget-slider").count(), "a restored slider is connected to the kernel"

    frames = _saved_frames(path)
    shown = _shown_png(output)
    assert shown in frames, "the picture shown is not one of the saved frames"
    output.screenshot(path=str(SHOTS / "jupyterlab-ch1-widget-0-saved.png"))
    n_sliders = output.locator(".widget-slider").count()
    for k in range(n_sliders):
        shown = _drag_to_other_end(page, output, k, shown, frames)
        output.screenshot(path=str(SHOTS / f"jupyterlab-ch1-widget-{k + 1}-dragged.png"))

    # Saving keeps the saved widget state. The widget manager serializes only widgets that live in a kernel, so
    # with its saveState setting on, a save (or an autosave: with that setting the notebook is marked modified as
    # soon as the state is restored) would replace the precomputed state by an empty one and the widget would be
    # gone when the notebook is reopened. jupyterlab/overrides.json keeps the setting off.
    dirty = page.eval_on_selector_all(".jp-mod-dirty", "els => els.length")
    assert not dirty, "opening the notebook and moving its sliders marked it modified (saveState on?)"
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 20
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert path.stat().st_mtime_ns != before, "Ctrl+S did not save the notebook"
    page.wait_for_function("() => document.querySelectorAll('.jp-mod-dirty').length === 0", timeout=20_000)
    page.wait_for_timeout(500)  # the server finishes writing the file after it answers the save
    assert _saved_frames(path) == frames, (
        "saving the notebook lost its saved widget frames: is the widget manager's saveState setting on?")

    # With the kernel shut down the widget still answers.
    for kernel in lab.api("/api/kernels"):
        lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    assert lab.api("/api/kernels") == [], "the kernel is still running"
    page.wait_for_timeout(1000)
    shown = _drag_to_other_end(page, output, 0, shown, frames)
    output.screenshot(path=str(SHOTS / "jupyterlab-ch1-widget-no-kernel.png"))
    assert not outside, f"the page tried to reach beyond the lab server: {outside[:5]}"
