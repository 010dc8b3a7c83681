"""Shared fixtures: a temporary workbench, a local hub on 127.0.0.1, a CLI runner.

The Hugging Face client reads its settings when it is imported, so the environment is
isolated here, before any test module imports it: a private HF_HOME (no stored token), no
token variables, no offline flag.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="harmonia-test-hf-home-")
for _var in ("HF_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HARMONIA_ROOT"):
    os.environ.pop(_var, None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# transformers' EnCodec decoder unless a test asks for the encodec path (tests/engines/test_encodec.py):
# a choice measured on the tiny model would make ids and manifests depend on the machine's timing
os.environ["HARMONIA_ENCODEC_LAYOUT"] = "torch"

import pytest  # noqa: E402

from harmonia.workbench import Workbench  # noqa: E402
from tests.hubserver import FakeHub  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

PARAMS = """\
models:
  toy:
    repo: acme/toy
    revision: main
    license: mit
    engine: musicgen
  private:
    repo: acme/private
  gated:
    repo: acme/gated
  broken:
    repo: acme/broken
  corrupt:
    repo: acme/corrupt
  ghost:
    repo: acme/ghost
  tiny-musicgen:
    builder: musicgen
    seed: 0
    engine: musicgen
    license: mit
  tiny-musicgen-stereo:
    builder: musicgen-stereo
    seed: 0
    engine: musicgen
    license: mit
  tiny-musicgen-melody:
    builder: musicgen-melody
    seed: 0
    engine: musicgen
    license: mit
  tiny-stable-audio:
    builder: stable-audio
    seed: 0
    engine: stable-audio
    license: mit
  tiny-ace-step:
    builder: ace-step
    seed: 0
    engine: ace-step
    license: mit
  tiny-demucs:
    builder: demucs
    seed: 0
    engine: demucs
    license: mit
  tiny-whisper:
    builder: whisper
    seed: 0
    engine: whisper
    license: mit
music:
  model: tiny-musicgen
  duration_s: 1.0
datasets:
  captions:
    repo: acme/captions
    license: cc-by-4.0
"""

TOY_FILES = {
    "config.json": b'{"model_type": "toy"}\n',
    "model.safetensors": bytes(range(256)) * 4096,  # 1 MiB, served as an LFS file
    "docs/notes.md": b"# toy\n",
    "pytorch_model.bin": b"PICKLE" * 100,
}


@pytest.fixture
def workbench(tmp_path: Path) -> Workbench:
    root = tmp_path / "wb"
    (root / "notebooks").mkdir(parents=True)
    (root / "params.yaml").write_text(PARAMS)
    return Workbench.open(root)


@pytest.fixture
def hub():
    with FakeHub() as server:
        server.add_repo("acme/toy", TOY_FILES)
        server.add_repo("acme/private", {"config.json": b"{}"}, token="hf_privateTOKEN1234567890")
        server.add_repo("acme/gated", {"config.json": b"{}"}, token="hf_privateTOKEN1234567890", gated=True)
        server.add_repo(
            "acme/broken",
            {"config.json": b"{}", "model.safetensors": b"\1" * 300_000},
            drop={"model.safetensors"},
        )
        server.add_repo(
            "acme/corrupt",
            {"config.json": b"{}", "model.safetensors": b"\2" * 10_000},
            corrupt={"model.safetensors"},
        )
        server.add_repo("acme/captions", {"captions.csv": b"id,caption\n1,calm piano\n"}, repo_type="dataset")
        yield server


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``python -m harmonia ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "harmonia", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_snapshot(wb: Workbench, name: str, files: dict[str, bytes], kind: str = "model") -> Path:
    """Write a snapshot by hand: the files plus an inventory with their true sizes and hashes."""
    import hashlib

    from harmonia.inventory import FileEntry, Inventory, Source, write_inventory

    folder = wb.snapshot_dir(kind, name)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    entries = tuple(FileEntry(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items())
    write_inventory(
        folder, Inventory(name, kind, Source("synthetic", builder="hand", seed=0), "mit", entries)
    )
    return folder


TINY_BUILDERS = {
    "tiny-musicgen": "musicgen",
    "tiny-musicgen-stereo": "musicgen-stereo",
    "tiny-musicgen-melody": "musicgen-melody",
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """The three tiny MusicGen snapshots, built once per test session (a models/ folder)."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    (root / "params.yaml").write_text(PARAMS)
    wb = Workbench.open(root)
    for name, builder in TINY_BUILDERS.items():
        build_tiny(wb, builder, name=name, seed=0)
    return root / "models"


@pytest.fixture
def music_wb(workbench, tiny_models) -> Workbench:
    """A fresh workbench holding copies of the tiny models (so each test has its own artifacts/)."""
    shutil.copytree(tiny_models, workbench.root / "models")
    return workbench


@contextlib.contextmanager
def jupyter_lab(root: Path, home: Path, env: dict[str, str] | None = None):
    """A real JupyterLab on 127.0.0.1 (free port, token auth, a private HOME); yields (url, token, port)."""
    import secrets
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news toast
    full_env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
        **(env or {}),
    }
    args = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
        "--allow-root",
    ]  # fmt: skip
    log_path = home / "lab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(args, env=full_env, stdout=subprocess.DEVNULL, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                if server.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {log_path.read_text()[-2000:]}")
                try:
                    urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError(f"JupyterLab did not start: {log_path.read_text()[-2000:]}")
            yield url, token, port
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="session")
def tiny_stable_audio(tmp_path_factory) -> Path:
    """The tiny Stable Audio snapshot, built once per test session (a models/ folder)."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-stable-audio")
    (root / "params.yaml").write_text(PARAMS)
    build_tiny(Workbench.open(root), "stable-audio", name="tiny-stable-audio", seed=0)
    return root / "models"


@pytest.fixture
def sample_wb(workbench, tiny_stable_audio, tiny_models) -> Workbench:
    """A fresh workbench holding tiny-stable-audio and tiny-musicgen (for lineage from music)."""
    shutil.copytree(tiny_stable_audio, workbench.root / "models")
    shutil.copytree(tiny_models / "tiny-musicgen", workbench.root / "models" / "tiny-musicgen")
    return workbench


@pytest.fixture(scope="session")
def tiny_ace_step(tmp_path_factory) -> Path:
    """The tiny ACE-Step snapshot, built once per test session (a models/ folder)."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-ace-step")
    (root / "params.yaml").write_text(PARAMS)
    build_tiny(Workbench.open(root), "ace-step", name="tiny-ace-step", seed=0)
    return root / "models"


@pytest.fixture(scope="session")
def tiny_demucs(tmp_path_factory) -> Path:
    """The tiny demucs snapshot, built once per test session (a models/ folder)."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-demucs")
    (root / "params.yaml").write_text(PARAMS)
    build_tiny(Workbench.open(root), "demucs", name="tiny-demucs", seed=0)
    return root / "models"


@pytest.fixture
def song_wb(workbench, tiny_ace_step) -> Workbench:
    """A fresh workbench holding tiny-ace-step."""
    shutil.copytree(tiny_ace_step, workbench.root / "models")
    return workbench


@pytest.fixture
def stems_wb(workbench, tiny_demucs) -> Workbench:
    """A fresh workbench holding tiny-demucs."""
    shutil.copytree(tiny_demucs, workbench.root / "models")
    return workbench


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """The tiny Whisper snapshot, built once per test session (a models/ folder)."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-whisper")
    (root / "params.yaml").write_text(PARAMS)
    build_tiny(Workbench.open(root), "whisper", name="tiny-whisper", seed=0)
    return root / "models"


@pytest.fixture
def whisper_wb(workbench, tiny_whisper) -> Workbench:
    """A fresh workbench holding tiny-whisper."""
    shutil.copytree(tiny_whisper, workbench.root / "models")
    return workbench


VIDEO_PARAMS = PARAMS.replace(
    "music:\n",
    "  tiny-wan:\n    builder: wan\n    seed: 0\n    engine: wan\n    license: mit\n"
    "video:\n  model: tiny-wan\n  width: 64\n  height: 48\n  frames: 9\n  fps: 8.0\n  steps: 2\n"
    "music:\n",
    1,
)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    """The tiny Wan snapshot, built once per test session (a models/ folder)."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-wan")
    (root / "params.yaml").write_text(VIDEO_PARAMS)
    build_tiny(Workbench.open(root), "wan", name="tiny-wan", seed=0)
    return root / "models"


@pytest.fixture
def video_wb(tmp_path, tiny_wan, tiny_models) -> Workbench:
    """A fresh workbench holding tiny-wan and tiny-musicgen (a soundtrack with lineage)."""
    root = tmp_path / "video-wb"
    (root / "notebooks").mkdir(parents=True)
    (root / "params.yaml").write_text(VIDEO_PARAMS)
    shutil.copytree(tiny_wan, root / "models")
    shutil.copytree(tiny_models / "tiny-musicgen", root / "models" / "tiny-musicgen")
    return Workbench.open(root)


def pytest_configure(config):
    """Before any xdist worker starts: librosa's numba functions compiled into their cache by one
    process (two workers compiling one at once crashed a worker: numba #10128), and Harmonia's
    own decoding products built (once per machine; workers would wait for each other's build)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        from harmonia.kernels import unavailable
        from harmonia.samples import warm_numba_cache

        warm_numba_cache()
        unavailable("rows_linear")
