"""The studio in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

Runs every cell of notebooks/01_music_studio.ipynb (with tiny-model parameters injected),
checks that the studio renders as widgets, clicks Generate, waits for the player, and saves a
screenshot to outputs/screenshots/ (git-ignored).
"""

import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from tests.conftest import REPO_ROOT, jupyter_lab

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO_ROOT / "outputs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing in CI: `make setup` installs Debian's chromium package.")
    pytestmark = pytest.mark.skip(reason=f"{CHROMIUM} not installed (make setup installs it)")


@pytest.fixture
def lab(tmp_path, tiny_models):
    """A temporary workbench with tiny models, served by JupyterLab on 127.0.0.1 with a token."""
    root = tmp_path / "wb"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "params.yaml", root)
    shutil.copytree(tiny_models, root / "models")
    tiny = yaml.safe_load((REPO_ROOT / "notebooks" / "tiny-params.yaml").read_text())
    nb = nbformat.read(REPO_ROOT / "notebooks" / "01_music_studio.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = "".join(f"{k} = {v!r}\n" for k, v in tiny["01_music_studio.ipynb"].items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(values, metadata={"tags": ["injected-parameters"]}))
    nbformat.write(nb, root / "notebooks" / "01_music_studio.ipynb")

    from harmonia.notebooks import ensure_kernel

    ensure_kernel()
    with jupyter_lab(root, tmp_path / "home") as (url, token, _):
        yield url, token, root


@pytest.mark.slow
def test_studio_renders_generates_and_plays_in_chromium(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    url, token, root = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1250})
        page.set_default_timeout(60_000)
        try:
            # 1. Open the notebook and wait for its kernel.
            page.goto(f"{url}/lab/tree/notebooks/01_music_studio.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            dialog = page.locator(".jp-Dialog:has-text('Select Kernel')")
            try:  # JupyterLab may ask which kernel to start: the notebook's own (Harmonia) is preselected
                dialog.wait_for(timeout=10_000)
                dialog.locator("button:has-text('Select')").click()
            except PlaywrightTimeout:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
            # 2. Run all cells from the Run menu.
            page.click(".lm-MenuBar-item:has-text('Run')")
            page.click(".lm-Menu-item:has-text('Run All Cells')")
            # 3. The studio renders as widgets, not as "Loading widget..." or a text repr.
            studio = page.wait_for_selector(".harmonia-studio")
            assert studio.is_visible()
            page.wait_for_selector(".harmonia-studio button:has-text('Generate')")
            text = page.inner_text(".harmonia-studio")
            assert "Harmonia studio" in text and "Loading widget" not in text
            assert page.locator("text=VBox(children=").count() == 0
            # 4. An idea, then Generate; wait for the player.
            page.fill(".harmonia-studio textarea", "a calm piano melody in the rain")
            page.click(".harmonia-studio button:has-text('Generate')")
            page.wait_for_selector(".harmonia-studio .harmonia-ok")
            audio = page.wait_for_selector(".harmonia-studio audio")
            duration = page.evaluate(
                "a => new Promise(ok => a.readyState >= 1 ? ok(a.duration) : a.addEventListener('loadedmetadata', () => ok(a.duration)))",
                audio,
            )
            assert duration > 5  # the params.yaml default of 10 s, as MP3
            assert not page.evaluate("a => a.autoplay || a.loop", audio)
            status = page.inner_text(".harmonia-studio .harmonia-ok")
            assert status.startswith("Generated artifact ")
            assert (root / "artifacts" / status.split()[2]).is_dir()
            page.wait_for_selector(".harmonia-studio img")
            audio.scroll_into_view_if_needed()
            page.locator(".harmonia-studio").scroll_into_view_if_needed()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.locator(".harmonia-studio").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "studio.png"))
        except Exception:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "failure.png"))  # what the browser showed
            raise
        finally:
            browser.close()
