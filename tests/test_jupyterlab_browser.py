"""Notebook 3 in a real JupyterLab, driven by a headless chromium: run all, move the slider.

test_notebooks.py runs the notebooks headless (nbclient); nothing there renders a widget. Here a
`jupyter lab` of this environment serves a copy of 03_hard_regions.ipynb (same data as there:
ELEGANTVIZ_NOTEBOOK_SMALL=1, a private work folder, the shipped model), chromium opens it through
Playwright, runs every cell from the Run menu, and then drags the "a (hard share)" slider: the
picture below it must change. Screenshots of the picture before and after are kept in tmp_path.

Needs the `playwright` package and a chromium on PATH (Debian's `chromium`; no browser is ever
downloaded); skips with the reason otherwise.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_hard_regions.ipynb"
SLIDER_LABEL = "a (hard share)"  # widgets.RATIO["label"]: the slider of draw_cut
SERVER_START_TIMEOUT = 90  # s, for `jupyter lab` to answer on its port
RUN_ALL_TIMEOUT = 120_000  # ms, for every cell to have run
REDRAW_TIMEOUT = 30_000  # ms, for a slider move to show a new picture
LEAKED_SETTINGS = ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH", "JUPYTER_PLATFORM_DIRS",
                   "JUPYTERLAB_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "JUPYTER_TOKEN",
                   "JUPYTER_ALLOW_INSECURE_WRITES")

pytestmark = pytest.mark.slow


def _chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium); Playwright's own browsers are not used")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live process under ``pid``, from /proc (kernels run in their own
    session, so killing the server's process group does not reach them)."""
    parent: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        parent[int(entry.name)], started[int(entry.name)] = int(fields[1]), fields[19]
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p:
                found.append((child, started[child]))
                todo.append(child)
    return found


def _same_process(pid: int, start: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[19] == start


class Lab:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path, root: Path):
        self.url, self.token, self.proc, self.log, self.root = url, token, proc, log, root

    def api(self, path: str, method: str = "GET", timeout: float = 5):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_for_kernel_connected(self, notebook: str, timeout: float = 90) -> dict:
        """The notebook's kernel idle with the page on its websocket: JupyterLab's "idle" dot shows
        before the kernel is attached, and Run All then skips every cell."""
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for session in self.api("/api/sessions"):
                if session.get("path", "").endswith(notebook) and session.get("kernel"):
                    seen = self.api(f"/api/kernels/{session['kernel']['id']}")
                    if seen.get("execution_state") == "idle" and seen.get("connections", 0) >= 1:
                        return seen
            time.sleep(0.25)  # poll interval
        raise AssertionError(f"no idle, connected kernel for {notebook} after {timeout:.0f} s (last: {seen})")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


@pytest.fixture
def lab(tmp_path):
    """`jupyter lab` of this interpreter serving a copy of notebook 3, in private Jupyter dirs."""
    _chromium()
    root, work, home = tmp_path / "root", tmp_path / "work", tmp_path / "jupyter"
    root.mkdir()
    work.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    # the kernelspec "python3" and the widgets' lab extension still come from the venv's
    # share/jupyter (sys.prefix stays on Jupyter's path); only the user's dirs are swapped out
    config, data = home / "config", home / "data"
    settings = config / "lab" / "user-settings" / "@jupyterlab"
    # no "get news?" toast over the notebook; every cell in the DOM (no windowed rendering)
    _write(settings / "apputils-extension" / "notification.jupyterlab-settings",
           {"fetchNews": "false", "checkForUpdates": False})
    _write(settings / "notebook-extension" / "tracker.jupyterlab-settings", {"windowingMode": "none"})

    env = {k: v for k, v in os.environ.items() if k not in LEAKED_SETTINGS}
    env.update({
        "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_DATA_DIR": str(data),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
        "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(config / "lab" / "workspaces"),
        # what test_notebooks.py gives the notebooks
        "ELEGANTVIZ_NOTEBOOK_SMALL": "1", "ELEGANTVIZ_NOTEBOOK_WORK": str(work), "ELEGANTVIZ_NOTEBOOK_NAPARI": "0",
    })
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors on two shared cores (see conftest.one_torch_thread)
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = tmp_path / "jupyter-lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log, root)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                server.api("/api/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on port {port} in {SERVER_START_TIMEOUT} s:\n"
                                f"{server.log_tail()}")
                time.sleep(0.25)  # poll interval
        yield server
    finally:
        _stop(server)


def _stop(server: Lab) -> None:
    """Shut the server down (it stops its kernels), then make sure: its process group, then any
    process it started that is still alive, by pid."""
    proc = server.proc
    children = _descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        try:
            server.api("/api/shutdown", method="POST")
        except Exception:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    for pid, start in children:
        if _same_process(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- in the page ---------------------------------------------------------------------------

# an IPython traceback in a stderr output (warnings are stderr too, and do not match)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Cell In\[\d+\], line \d+|^\w*(Error|Exception)\b", re.M)

STDERR = '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputPrompt"
RAN = re.compile(r"^\[\d+\]:$")  # "[7]:"; "[ ]:" not run, "[*]:" running or queued

# every code cell has an execution count, or one raised (Run All stops there: do not wait on)
ALL_RAN_OR_ERROR = r"""([stderr, prompts, traceback, ran]) => {
    const tb = new RegExp(traceback, 'm'), done = new RegExp(ran);
    if ([...document.querySelectorAll(stderr)].some(e => tb.test(e.textContent))) return true;
    const p = [...document.querySelectorAll(prompts)].map(e => e.textContent.trim());
    return p.length > 0 && p.every(t => done.test(t));
}"""

# the picture drawn under the slider labelled `label`, loaded, and (if given) not `old`
PICTURE_READY = r"""([label, old]) => {
    const cell = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].find(c =>
        [...c.querySelectorAll('.widget-label')].some(l => l.textContent.trim() === label));
    const img = cell && cell.querySelector('.widget-output .jp-RenderedImage img');
    return !!img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') !== old;
}"""


def _errors(page) -> list[str]:
    return [t for t in page.locator(STDERR).all_inner_texts() if TRACEBACK.search(t)]


def _run_all(page) -> None:
    """Run > Run All Cells, and wait for the last cell (or the first error)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(".lm-MenuBar-item", has_text="Run").click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    try:
        page.wait_for_function(ALL_RAN_OR_ERROR, arg=[STDERR, PROMPTS, TRACEBACK.pattern, RAN.pattern],
                               timeout=RUN_ALL_TIMEOUT, polling=250)
    except PlaywrightTimeout:
        prompts = [p.strip() for p in page.locator(PROMPTS).all_inner_texts()]
        raise AssertionError(f"cells still not run after {RUN_ALL_TIMEOUT / 1000:.0f} s: prompts {prompts}") from None


def _wait_for_new_picture(page, old_src: str | None, what: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(PICTURE_READY, arg=[SLIDER_LABEL, old_src], timeout=REDRAW_TIMEOUT, polling=100)
    except PlaywrightTimeout:
        raise AssertionError(f"{what}: no {'new ' if old_src else ''}picture under the {SLIDER_LABEL!r} slider "
                             f"within {REDRAW_TIMEOUT / 1000:.0f} s") from None


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _changed_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that differ by more than 40 in some channel (a resize counts as all)."""
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > 40).mean())


def _assert_a_picture(px: np.ndarray, what: str) -> None:
    drawn = (px.min(axis=-1) < 230).mean()  # not white-ish
    assert px.shape[0] > 100 and px.shape[1] > 300, f"{what}: picture is only {px.shape[1]} x {px.shape[0]} px"
    assert drawn > 0.05 and px.std() > 20, f"{what}: picture is blank ({drawn:.1%} drawn, std {px.std():.1f})"


def test_notebook_3_runs_in_jupyterlab_and_its_slider_redraws(lab, tmp_path):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    # a bare "python" in the kernelspec is the server's interpreter (jupyter_client swaps it for
    # sys.executable), and the server is this interpreter
    spec = lab.api("/api/kernelspecs")["kernelspecs"]["python3"]["spec"]
    assert spec["argv"][0] in ("python", sys.executable), f"the notebook's kernel is {spec['argv'][0]}"
    n_code = sum(c["cell_type"] == "code" for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"])
    started = time.perf_counter()
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        try:
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}&reset", timeout=60_000)
            # every code cell rendered, and a kernel attached and ready, before running anything
            page.wait_for_function("n => document.querySelectorAll('.jp-Notebook .jp-CodeCell').length === n",
                                   arg=n_code, timeout=60_000)
            lab.wait_for_kernel_connected(NOTEBOOK.name)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

            _run_all(page)
            page.screenshot(path=str(shots / "notebook-after-run-all.png"))
            errors = _errors(page)
            assert not errors, "a cell raised in JupyterLab:\n" + "\n---\n".join(errors)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            prompts = [p.strip() for p in page.locator(PROMPTS).all_inner_texts()]
            assert len(prompts) == n_code and all(RAN.match(p) for p in prompts), f"not every cell ran: {prompts}"
            assert not page.get_by_text("Error displaying widget").count(), "a widget failed to render"

            # the slider of "The cut as `a` moves" and the picture under it
            cell = page.locator(".jp-Notebook .jp-CodeCell").filter(
                has=page.locator(".widget-label", has_text=SLIDER_LABEL))
            assert cell.count() == 1, f"no single cell with a {SLIDER_LABEL!r} slider"
            slider = cell.locator(".jupyter-widgets.widget-slider")
            slider.wait_for(state="visible", timeout=30_000)
            handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
            picture = cell.locator(".widget-output .jp-RenderedImage img")
            # Note: once the slider is drawn, the browser sends its value back as 0.09999999999999999
            # (noUiSlider's min + 9 * step) and draw_cut runs again; that picture is the same PNG
            # (same hard region, "a = 10 %"), so the Output does not change and src0 stays valid.
            _wait_for_new_picture(page, None, "after running all cells")
            value0 = readout.inner_text().strip()
            assert float(value0) == pytest.approx(0.1), f"the slider starts at {value0}, not at ratio = 0.1"
            src0 = picture.get_attribute("src")
            px0 = _pixels(picture.screenshot(path=str(shots / "before.png")))
            _assert_a_picture(px0, f"the picture at a = {value0}")

            # drag the handle to 60 % of the track with the mouse (one move: one new value)
            track, knob = slider.locator(".noUi-base").bounding_box(), handle.bounding_box()
            y = knob["y"] + knob["height"] / 2
            page.mouse.move(knob["x"] + knob["width"] / 2, y)
            page.mouse.down()
            page.mouse.move(track["x"] + 0.6 * track["width"], y)
            page.mouse.up()
            value1 = readout.inner_text().strip()
            assert float(value1) > 0.2, f"dragging the slider moved it from {value0} to {value1} only"
            _wait_for_new_picture(page, src0, f"after dragging the slider to {value1}")
            src1 = picture.get_attribute("src")
            px1 = _pixels(picture.screenshot(path=str(shots / "after.png")))
            _assert_a_picture(px1, f"the picture after the drag to a = {value1}")
            drag_change = _changed_share(px0, px1)
            # a = 0.1 -> ~0.3 moves the cut line and grows the magenta region: ~4 % of the pixels
            assert drag_change > 0.01, f"dragging a {value0} -> {value1} changed {drag_change:.2%} of the picture"

            # and with the keyboard: End takes it to the maximum
            handle.focus()
            handle.press("End")
            value2 = readout.inner_text().strip()
            assert float(value2) == pytest.approx(0.5), f"End moved the slider to {value2}"
            _wait_for_new_picture(page, src1, f"after pressing End ({value2})")
            px2 = _pixels(picture.screenshot(path=str(shots / "after-end-key.png")))
            _assert_a_picture(px2, f"the picture after End (a = {value2})")
            key_change = _changed_share(px1, px2)
            assert key_change > 0.01, f"End ({value1} -> {value2}) changed {key_change:.2%} of the picture"
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            errors = _errors(page)
            assert not errors, "moving the slider raised:\n" + "\n---\n".join(errors)
        except (PlaywrightError, AssertionError):
            try:
                page.screenshot(path=str(shots / "failure.png"))
            except PlaywrightError:
                pass
            print(f"screenshots in {shots}; server log tail:\n{lab.log_tail()}")
            raise
        finally:
            browser.close()

    assert not problems, "\n".join(problems)
    print(f"JupyterLab browser test: a {value0} -> {value1} -> {value2}, picture changed "
          f"{drag_change:.1%} / {key_change:.1%}; {time.perf_counter() - started:.1f} s in the browser; "
          f"screenshots in {shots}")
