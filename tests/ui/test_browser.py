"""The studio in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

Runs every cell of a notebook (with its tiny-model parameters injected) and checks what a user
sees: notebooks/01_music_studio.ipynb renders the studio as widgets, Generate makes a player;
notebooks/03_songs.ipynb fills the Song view (the take and its stems play, the transcript marks
words); notebooks/04_video.ipynb fills the Video view (the player loads the MP4 by URL and
knows its duration). Screenshots go to outputs/screenshots/ (git-ignored).
"""

import contextlib
import json
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


def serve(tmp_path, notebook: str, models: list[Path]):
    """A temporary workbench holding ``models`` with ``notebook`` (tiny parameters injected),
    served by JupyterLab on 127.0.0.1 with a token; yields (url, token, root)."""
    root = tmp_path / "wb"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "params.yaml", root)
    for folder in models:  # models/ folders, or one snapshot each
        target = root / "models" / (folder.name if folder.name != "models" else "")
        shutil.copytree(folder, target, dirs_exist_ok=True)
    tiny = yaml.safe_load((REPO_ROOT / "notebooks" / "tiny-params.yaml").read_text())
    nb = nbformat.read(REPO_ROOT / "notebooks" / notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = "".join(f"{k} = {v!r}\n" for k, v in tiny[notebook].items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(values, metadata={"tags": ["injected-parameters"]}))
    nbformat.write(nb, root / "notebooks" / notebook)

    from harmonia.notebooks import ensure_kernel

    ensure_kernel()
    with jupyter_lab(root, tmp_path / "home") as (url, token, _):
        yield url, token, root


@pytest.fixture
def lab(tmp_path, tiny_models):
    yield from serve(tmp_path, "01_music_studio.ipynb", [tiny_models])


@pytest.fixture
def songs_lab(tmp_path, tiny_ace_step, tiny_demucs, tiny_whisper):
    yield from serve(tmp_path, "03_songs.ipynb", [tiny_ace_step, tiny_demucs, tiny_whisper])


@pytest.fixture
def video_lab(tmp_path, tiny_wan, tiny_models):
    yield from serve(tmp_path, "04_video.ipynb", [tiny_wan, tiny_models / "tiny-musicgen"])


@contextlib.contextmanager
def browser_page(screenshot_on_failure: str, height: int = 1250):
    """A Chromium page (1300 wide, 60 s timeouts); a screenshot of it when the body fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": height})
        page.set_default_timeout(60_000)
        try:
            yield page
        except Exception:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / screenshot_on_failure), full_page=True)
            raise
        finally:
            browser.close()


def run_all_cells(page, url: str, token: str, notebook: str) -> None:
    """Open the notebook in JupyterLab, wait for its kernel, and run every cell from the Run menu."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{url}/lab/tree/notebooks/{notebook}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    dialog = page.locator(".jp-Dialog:has-text('Select Kernel')")
    try:  # JupyterLab may ask which kernel to start: the notebook's own (Harmonia) is preselected
        dialog.wait_for(timeout=10_000)
        dialog.locator("button:has-text('Select')").click()
    except PlaywrightTimeout:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")


MEDIA_LOADED = """m => new Promise((ok, fail) => {
    const facts = () => ({src: m.currentSrc, readyState: m.readyState, duration: m.duration,
                          width: m.videoWidth || 0, height: m.videoHeight || 0, error: m.error && m.error.code});
    if (m.readyState >= 1) return ok(facts());
    m.addEventListener('loadedmetadata', () => ok(facts()));
    m.addEventListener('error', () => ok(facts()));
    if (m.preload === 'none') m.load();
})"""


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
            # 4. An idea, the 4-bit precision on a bfloat16 load, then Generate; wait for the player.
            page.fill(".harmonia-studio textarea", "a calm piano melody in the rain")
            precision = page.locator(".harmonia-studio .widget-dropdown:has-text('precision') select")
            assert precision.locator("option").all_inner_texts() == ["exact", "bf16", "int8", "int4"]
            precision.select_option("int4")
            dtype = page.locator(".harmonia-studio .widget-dropdown:has-text('dtype') select")
            assert dtype.locator("option").all_inner_texts() == ["float32", "bfloat16"]  # on the CPU
            dtype.select_option("bfloat16")
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
            manifest = json.loads((root / "artifacts" / status.split()[2] / "manifest.json").read_text())
            assert (manifest["runtime"]["precision"], manifest["runtime"]["dtype"]) == ("int4", "bfloat16")
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


@pytest.mark.slow
def test_the_song_view_plays_the_take_and_its_stems_and_marks_the_transcript(songs_lab):
    url, token, _ = songs_lab
    with browser_page("songs-failure.png", height=2600) as page:
        run_all_cells(page, url, token, "03_songs.ipynb")
        view = page.wait_for_selector(".harmonia-song")
        page.wait_for_selector(
            ".harmonia-song .harmonia-transcript", timeout=240_000
        )  # the last action's result
        text = view.inner_text()
        assert "Loading widget" not in text and text.startswith("Song")
        # 1. The take (the repaint) and the four stems play: sources set, 2 s each.
        players = page.query_selector_all(".harmonia-song audio")
        assert len(players) == 5
        for audio in players:
            facts = page.evaluate(MEDIA_LOADED, audio)
            assert (
                facts["src"] and facts["error"] is None and facts["duration"] == pytest.approx(2.0, abs=0.1)
            )
        for stem in ("vocals", "drums", "bass", "other"):
            assert view.query_selector(f"b:text-is('{stem}')") is not None
        # 2. Every control says what it is.
        for label in ("model", "style", "lyrics", "duration (s)", "range (s)", "stems model", "transcriber"):
            assert view.query_selector(f".widget-label:text-is('{label}')") is not None, label
        # 3. The transcript beside the lyrics marks the words not understood (a random tiny Whisper: all).
        marked = page.query_selector_all(
            ".harmonia-song .harmonia-transcript span.harmonia-substitute, .harmonia-song .harmonia-transcript span.harmonia-delete"
        )
        assert " ".join(m.inner_text() for m in marked).split() == ["hello", "there", "la", "la"]
        assert page.evaluate("s => getComputedStyle(s).backgroundColor", marked[0]) != "rgba(0, 0, 0, 0)"
        assert "WER 1.000" in view.inner_text()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        view.screenshot(path=str(SCREENSHOTS / "views-songs.png"))


@pytest.mark.slow
def test_the_video_view_loads_the_mp4_by_url_and_shows_the_shots(video_lab):
    url, token, _ = video_lab
    with browser_page("video-failure.png", height=2000) as page:
        run_all_cells(page, url, token, "04_video.ipynb")
        view = page.wait_for_selector(".harmonia-video")
        page.wait_for_selector(
            ".harmonia-video :text('16 frames at 8 fps')", timeout=240_000
        )  # the music video
        # 1. The player loads the music video's MP4 by URL from JupyterLab's file server.
        video = page.wait_for_selector(".harmonia-video video")
        src = page.evaluate("v => v.getAttribute('src') || v.currentSrc", video)
        assert "/files/artifacts/" in src and src.endswith("/take-0.mp4")
        facts = page.evaluate(MEDIA_LOADED, video)
        assert facts["error"] is None and facts["readyState"] >= 1
        assert facts["duration"] == pytest.approx(2.0, abs=0.15)
        assert (facts["width"], facts["height"]) == (32, 32)  # the video's own size, shown 320 px wide
        assert page.evaluate("v => v.getBoundingClientRect().width", video) == 320
        # 2. The contact sheet and the shot list over the waveform show.
        images = page.query_selector_all(".harmonia-video img")
        assert all(page.evaluate("i => i.naturalWidth", i) > 0 for i in images if i.is_visible())
        prompts = [
            i.input_value()
            for i in page.query_selector_all(".harmonia-video .harmonia-shot input[type='text']")
        ]
        assert len(prompts) == 2 and prompts[0].startswith("a city street")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        view.screenshot(path=str(SCREENSHOTS / "views-video.png"))
