"""audiocraft's AudioGen and MAGNeT through the worker, on tiny models built in code.

Fast tests: the main environment never imports audiocraft, xformers or the stand-ins; the
pickles are refused unless params.yaml allows them; a worker that dies gives a clear error.
Slow tests (they make the worker's environment once per session, from PyPI, and start the
worker): each engine's shapes and rates, the same bytes across processes, reproduce, cancel,
a crash mid-generation writes nothing.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harmonia.artifacts import list_artifacts
from harmonia.audio import Audio
from harmonia.errors import Cancelled, RequestError, VerificationError, WorkerError
from harmonia.requests import MusicRequest, SampleRequest
from harmonia.workbench import Workbench
from tests.conftest import PARAMS, REPO_ROOT, run_cli

MODELS = """\
  tiny-audiogen:
    builder: audiogen
    seed: 0
    engine: audiogen
    license: mit
    allow_pickle: true
  tiny-magnet:
    builder: magnet
    seed: 0
    engine: magnet
    license: mit
    allow_pickle: true
    mbd: tiny-mbd
  tiny-magnet-plain:
    builder: magnet
    seed: 0
    engine: magnet
    license: mit
    allow_pickle: true
  tiny-mbd:
    builder: mbd
    seed: 0
    license: mit
    allow_pickle: true
  tiny-t5:
    builder: t5
    seed: 0
    license: mit
  tiny-audiogen-t5:
    builder: audiogen-t5
    seed: 0
    engine: audiogen
    license: mit
    allow_pickle: true
    text_encoder: tiny-t5
  tiny-audiogen-t5-bare:
    builder: audiogen-t5
    seed: 0
    engine: audiogen
    license: mit
    allow_pickle: true
  tiny-audiogen-strict:
    builder: audiogen
    seed: 0
    engine: audiogen
    license: mit
"""


def _params() -> str:
    return PARAMS.replace("models:\n", "models:\n" + MODELS, 1)


def _workbench(root: Path) -> Workbench:
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(_params())
    return Workbench.open(root)


# -- fast: no worker environment needed -------------------------------------------------------------
def test_the_main_environment_never_imports_audiocraft_xformers_or_the_standins(tmp_path):
    code = """
import sys
import harmonia.engines.audiocraft, harmonia.generation, harmonia.tiny, harmonia.cli
from harmonia.engines import engine_class
engine_class("audiogen"), engine_class("magnet")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("audiocraft", "xformers", "torchaudio"))
print(bad)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    with pytest.raises(ImportError):  # and nothing of them is installed where Harmonia runs
        __import__("audiocraft")


def test_a_dead_worker_gives_a_clear_error(tmp_path):
    from harmonia.engines.audiocraft import Worker

    worker = Worker(Path(sys.executable))  # the worker's loop needs only the standard library
    with pytest.raises(WorkerError, match=r"could not frobnicate: ValueError: unknown op 'frobnicate'"):
        worker.call("frobnicate")
    with pytest.raises(WorkerError) as caught:
        worker.call("crash", code=7)
    assert str(caught.value).startswith(
        "The audiocraft worker exited with code 7 during 'crash'; nothing was written. Its last words: "
    )
    assert not worker.alive


def test_allow_pickle_must_be_a_boolean(tmp_path):
    from harmonia.errors import ParamsError

    root = tmp_path / "wb"
    _workbench(root)
    (root / "params.yaml").write_text(_params().replace("allow_pickle: true", "allow_pickle: yes please", 1))
    with pytest.raises(
        ParamsError, match=r"tiny-audiogen\.allow_pickle must be true or false, got 'yes please'"
    ):
        Workbench.open(root).specs("model")


def test_the_decoder_is_part_of_a_music_request_only_when_it_is_not_encodec():
    plain, mbd = MusicRequest("x", seed=1), MusicRequest("x", seed=1, decoder="mbd")
    assert "decoder" not in plain.to_json({})  # every EnCodec artifact keeps the id it had
    assert mbd.to_json({})["decoder"] == "mbd"
    assert MusicRequest.from_json(mbd.to_json({}), {}) == mbd


def test_mbd_is_refused_where_it_does_not_apply_with_what_to_use(music_wb):
    from harmonia.generation import generate

    with pytest.raises(RequestError) as caught:
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=0, decoder="mbd"))
    assert str(caught.value) == (
        "decoder mbd: Multi-Band Diffusion decodes MAGNeT's EnCodec tokens in the audiocraft worker; the musicgen "
        "engine decodes with its own EnCodec only. Use --decoder encodec, or a magnet model whose params.yaml "
        "entry names an MBD snapshot (e.g. --model magnet-small-10secs --decoder mbd)."
    )
    with pytest.raises(RequestError, match=r"^decoder must be one of encodec, mbd, got 'hifi'\.$"):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=0, decoder="hifi"))
    assert list_artifacts(music_wb) == []


def test_text_encoder_and_mbd_must_name_another_model(tmp_path):
    from harmonia.errors import ParamsError

    root = tmp_path / "wb"
    _workbench(root)
    (root / "params.yaml").write_text(_params().replace("mbd: tiny-mbd", "mbd: tiny-magnet", 1))
    with pytest.raises(
        ParamsError, match=r"tiny-magnet\.mbd must name another model of models: \(e\.g\. t5-base\)"
    ):
        Workbench.open(root).specs("model")


def test_the_real_audiocraft_models_are_declared_pinned_and_noncommercial():
    wb = Workbench.open(REPO_ROOT)
    specs = wb.specs("model")
    for name in ("audiogen-medium", "multiband-diffusion"):
        assert specs[name].license == "cc-by-nc-4.0" and specs[name].allow_pickle
    assert (
        specs["audiogen-medium"].text_encoder == "t5-large" and specs["t5-large"].repo == "google-t5/t5-large"
    )
    # magnet-small-10secs stays a commented entry until a commit of it can be pinned
    assert (
        "magnet-small-10secs" not in specs
        and "#   mbd: multiband-diffusion" in (REPO_ROOT / "params.yaml").read_text()
    )
    pins = {n: specs[n].revision for n in ("audiogen-medium", "multiband-diffusion", "t5-base", "t5-large")}
    assert pins == {
        "audiogen-medium": "1277dd7dfd8fa57a205a70acc5de0ee90804502f",
        "multiband-diffusion": "841e770848e554829f0f7f4c3496f48b34aaea5c",
        "t5-base": "a9723ea7f1b39c1eae772870f3b547bf6ef7e6c1",
        "t5-large": "150ebc2c4b72291e770f58e6057481c8d2ed331a",
    }
    assert specs["multiband-diffusion"].allow_patterns == ("mbd_musicgen_32khz.th", "README.md")


def test_the_worker_environment_holds_no_hugging_face_token():
    """Before: the always-offline worker inherited HF_TOKEN and its spellings."""
    from harmonia.engines.audiocraft import worker_environment

    env = worker_environment({
        "HF_TOKEN": "hf_a", "HUGGING_FACE_HUB_TOKEN": "hf_b", "HUGGINGFACE_HUB_TOKEN": "hf_c",
        "HF_TOKEN_PATH": "/home/u/.cache/huggingface/token", "HF_HOME": "/h", "PYTHONPATH": "/x",
        "PATH": "/usr/bin", "HF_HUB_OFFLINE": "0",
    })  # fmt: skip
    assert env == {
        "HF_HOME": "/h", "PATH": "/usr/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1", "PYTHONNOUSERSITE": "1",
    }  # fmt: skip


def test_worker_pins_are_exact_and_never_name_torch():
    from harmonia.engines.audiocraft import WORKER_PINS

    names = {pin.split("==")[0].lower() for pin in WORKER_PINS}
    assert all("==" in pin for pin in WORKER_PINS)
    assert not names & {"torch", "torchaudio", "xformers", "torchvision", "numpy", "av", "transformers"}


# -- slow: the worker's environment and the tiny models ------------------------------------------------
@pytest.fixture(scope="session")
def worker_env():
    """The worker's environment (made once, from PyPI, when missing) and a shared worker."""
    from harmonia.engines.audiocraft import ensure_worker_env, shutdown

    python = ensure_worker_env(quiet=True)
    yield python
    shutdown()


@pytest.fixture(scope="session")
def tiny_audiocraft(tmp_path_factory, worker_env) -> Path:
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-audiocraft")
    wb = _workbench(root)
    for builder in ("audiogen", "magnet", "mbd", "t5", "audiogen-t5"):
        build_tiny(wb, builder, seed=0)
    return root / "models"


@pytest.fixture
def ac_wb(tmp_path, tiny_audiocraft) -> Workbench:
    import shutil

    wb = _workbench(tmp_path / "wb")
    shutil.copytree(tiny_audiocraft, wb.root / "models")
    return wb


@pytest.mark.slow
def test_tiny_models_are_the_same_bytes_in_another_process(ac_wb, tmp_path):
    first = json.loads((ac_wb.root / "models" / "tiny-audiogen" / "inventory.json").read_text())
    other = _workbench(tmp_path / "other")
    done = run_cli("models", "tiny", "audiogen", cwd=other.root, timeout=300)
    assert done.returncode == 0, done.stderr
    second = json.loads((other.root / "models" / "tiny-audiogen" / "inventory.json").read_text())
    assert first["files"] == second["files"]
    assert {f["path"] for f in first["files"]} == {"state_dict.bin", "compression_state_dict.bin"}
    assert first["source"]["versions"]["audiocraft"] == "1.3.0"


@pytest.mark.slow
def test_audiogen_makes_samples_by_type_at_its_rate(ac_wb):
    from harmonia.generation import generate

    fx = generate(
        ac_wb, "tiny-audiogen", SampleRequest("dog barking", type="sfx", duration_s=1.0, seed=3), threads=1
    )
    (out,) = fx.artifact.manifest.outputs
    audio, rate = sf.read(fx.artifact.file(out), dtype="float32", always_2d=True)
    assert rate == 16_000 and audio.shape[1] == 1 and 0 < audio.shape[0] <= 16_000
    m = fx.artifact.manifest
    assert m.kind == "sample" and m.engine.name == "audiogen" and m.request["steps"] is None
    pickles = m.engine.details["pickled_weights"]
    assert pickles["files"] == ["compression_state_dict.bin", "state_dict.bin"]
    assert pickles["allowed_by"] == "params.yaml allow_pickle: true" and pickles["full_unpickling"] is False
    assert m.engine.details["worker"]["versions"]["audiocraft"] == "1.3.0"
    assert m.engine.details["worker"]["standins"] == {
        "xformers": "0.0.0+harmonia.standin", "torchaudio": "0.0.0+harmonia.standin",
    }  # fmt: skip
    loop = generate(
        ac_wb, "tiny-audiogen", SampleRequest("drums", type="loop", bpm=240, seed=1), threads=1
    ).result
    assert loop.audio[0].shape == (1, 16_000)  # 1 bar of 4 at 240 bpm, exact
    takes = generate(
        ac_wb, "tiny-audiogen", SampleRequest(["a", "b"], duration_s=0.5, takes=2, seed=5)
    ).result
    assert [(d["prompt"], d["take"], d["seed"]) for d in takes.take_details] == [
        (0, 0, 5), (0, 1, 6), (1, 0, 5), (1, 1, 6),
    ]  # fmt: skip
    assert takes.audio[0].tobytes() != takes.audio[1].tobytes()


@pytest.mark.slow
def test_magnet_makes_music_of_the_asked_length(ac_wb):
    from harmonia.generation import generate

    seen = []
    done = generate(
        ac_wb, "tiny-magnet", MusicRequest(["calm piano", "fast drums"], duration_s=1.5, seed=2),
        progress=lambda d, t: seen.append((d, t)), threads=1,
    )  # fmt: skip
    result = done.result
    assert result.sample_rate == 32_000 and [a.shape for a in result.audio] == [(1, 48_000)] * 2
    assert done.artifact.manifest.kind == "music" and done.artifact.manifest.engine.name == "magnet"
    assert (
        seen[-1] == (2 * 50, 2 * 50) and len(seen) == 2 * 50
    )  # MAGNeT's decoding steps, 20+10+10+10 a prompt
    assert result.audio[0].tobytes() != result.audio[1].tobytes()


@pytest.mark.slow
def test_refusals_come_before_the_model_loads(ac_wb):
    from harmonia.generation import generate

    cases = [
        ("tiny-magnet", MusicRequest("x", duration_s=3.0, seed=0),
         "duration_s is 3 s but model 'tiny-magnet' makes at most 2 s (MAGNeT decodes one fixed window); "
         "ask for at most 2 s."),
        ("tiny-magnet", MusicRequest("x", duration_s=1.0, melody=Audio(np.ones((1, 800), np.float32), 8000, "0" * 64), seed=0),
         "melody: magnet takes no melody; leave --melody out (musicgen models take it)."),
        ("tiny-audiogen", SampleRequest("x", negative_prompt="noise", seed=0),
         "negative_prompt: audiogen has no negative prompt; leave --negative out."),
        ("tiny-audiogen", SampleRequest("x", duration_s=31.0, seed=0),
         "duration_s is 31 s but model 'tiny-audiogen' generates at most 30.00 s; ask for at most 30 s."),
        ("tiny-audiogen", SampleRequest("x", type="loop", seed=0),
         "a loop needs a tempo: give bpm (e.g. --bpm 120) and, if not 1, bars (--bars 2)."),
    ]  # fmt: skip
    for model, request, message in cases:
        with pytest.raises(RequestError) as caught:
            generate(ac_wb, model, request, threads=1)
        assert str(caught.value) == message
    import shutil

    shutil.copytree(ac_wb.root / "models" / "tiny-audiogen", ac_wb.root / "models" / "tiny-audiogen-strict")
    with pytest.raises(VerificationError, match="contains pickled weights"):
        generate(ac_wb, "tiny-audiogen-strict", SampleRequest("x", seed=0))
    assert list_artifacts(ac_wb) == []


@pytest.mark.slow
def test_the_same_request_gives_the_same_bytes_in_another_process_and_reproduces(ac_wb):
    from harmonia.generation import generate, reproduce

    here = generate(ac_wb, "tiny-audiogen", SampleRequest("rain", duration_s=1.0, seed=9), threads=1)
    (out,) = here.artifact.manifest.outputs
    done = run_cli(
        "generate", "sample", "--model", "tiny-audiogen", "--type", "sfx", "--duration", "1", "--seed", "9",
        "--threads", "1", "--force", "rain", cwd=ac_wb.root, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = [a for a in list_artifacts(ac_wb) if a.id == here.artifact.id]
    assert again and again[0].manifest.outputs[0].sha256 == out.sha256
    music = generate(ac_wb, "tiny-magnet", MusicRequest("calm piano", duration_s=1.0, seed=4), threads=1)
    for artifact in (here.artifact, music.artifact):
        verdict = reproduce(ac_wb, artifact.id)
        assert verdict.identical, verdict.summary()


@pytest.mark.slow
def test_cancel_stops_between_steps_and_writes_nothing(ac_wb):
    from harmonia.generation import generate

    stop = threading.Event()

    def progress(done, total):
        if done == 3:
            stop.set()

    with pytest.raises(
        Cancelled, match=r"^Generation cancelled at step \d+ of \d+; no artifact was written\.$"
    ):
        generate(ac_wb, "tiny-audiogen", SampleRequest("wind", duration_s=1.0, seed=1), progress=progress,
                 cancel=stop, threads=1)  # fmt: skip
    assert list_artifacts(ac_wb) == []
    # the worker is still there and answers the next request
    assert (
        generate(ac_wb, "tiny-audiogen", SampleRequest("wind", duration_s=0.5, seed=1), threads=1).result
        is not None
    )


@pytest.mark.slow
def test_a_worker_killed_mid_generation_gives_a_clear_error_and_no_artifact(ac_wb):
    from harmonia.engines.audiocraft import Worker
    from harmonia.generation import generate

    def progress(done, total):
        if done == 2:
            os.kill(Worker.shared().process.pid, signal.SIGKILL)

    with pytest.raises(
        WorkerError, match=r"^The audiocraft worker exited with code -9 during 'generate'; nothing"
    ):
        generate(
            ac_wb, "tiny-magnet", MusicRequest("x", duration_s=1.0, seed=1), progress=progress, threads=1
        )
    assert list_artifacts(ac_wb) == []
    assert not any((ac_wb.root / "artifacts").glob("*")) if (ac_wb.root / "artifacts").exists() else True
    again = generate(
        ac_wb, "tiny-magnet", MusicRequest("x", duration_s=1.0, seed=1), threads=1
    )  # a new worker starts
    assert np.isfinite(again.result.audio[0]).all()


@pytest.mark.slow
def test_magnet_decodes_with_multiband_diffusion_recorded_and_reproducible(ac_wb):
    from harmonia.generation import generate, reproduce

    seen = []
    mbd = generate(
        ac_wb, "tiny-magnet", MusicRequest("calm piano", duration_s=1.0, seed=4, decoder="mbd"),
        progress=lambda d, t: seen.append((d, t)), threads=1,
    )  # fmt: skip
    plain = generate(ac_wb, "tiny-magnet", MusicRequest("calm piano", duration_s=1.0, seed=4), threads=1)
    assert mbd.result.audio[0].shape == plain.result.audio[0].shape == (1, 32_000)
    assert (
        mbd.result.audio[0].tobytes() != plain.result.audio[0].tobytes()
    )  # the same tokens, another decoder
    assert mbd.artifact.id != plain.artifact.id
    assert seen[-1] == (
        50 + 2 * 20,
        50 + 2 * 20,
    )  # MAGNeT's steps, then 20 diffusion steps in each of 2 bands
    m = mbd.artifact.manifest
    inventory = json.loads((ac_wb.root / "models" / "tiny-mbd" / "inventory.json").read_text())
    decoder = m.engine.details["decoder"]
    assert decoder["name"] == "mbd" and decoder["model"] == "tiny-mbd" and decoder["full_unpickling"] is True
    assert (decoder["n_bands"], decoder["steps_per_band"], decoder["sample_rate"]) == (2, 20, 32_000)
    assert m.identity["companions"]["decoder"][0] == "tiny-mbd"
    assert m.identity["companions"]["decoder"][1] == decoder["inventory_digest"]
    assert m.request["decoder"] == "mbd" and "decoder" not in plain.artifact.manifest.request
    assert plain.artifact.manifest.engine.details["decoder"] == {"name": "encodec"}
    assert "companions" not in plain.artifact.manifest.identity
    assert {(lic.model, lic.license) for lic in m.licenses} == {("tiny-magnet", "mit"), ("tiny-mbd", "mit")}
    assert inventory["files"][0]["path"] == "mbd_musicgen_32khz.th"
    verdict = reproduce(ac_wb, mbd.artifact.id)
    assert verdict.identical, verdict.summary()
    (out,) = m.outputs
    done = run_cli(
        "generate", "music", "--model", "tiny-magnet", "--decoder", "mbd", "--duration", "1", "--seed", "4",
        "--threads", "1", "--force", "calm piano", cwd=ac_wb.root, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = [a for a in list_artifacts(ac_wb) if a.id == mbd.artifact.id]
    assert again and again[0].manifest.outputs[0].sha256 == out.sha256  # the same bytes in another process


@pytest.mark.slow
def test_cancel_stops_between_diffusion_steps_and_writes_nothing(ac_wb):
    from harmonia.generation import generate

    stop = threading.Event()

    def progress(done, total):
        if done == 55:  # past MAGNeT's 50 steps: inside the MBD's diffusion
            stop.set()

    with pytest.raises(
        Cancelled, match=r"^Generation cancelled at step 5[56] of 90; no artifact was written\.$"
    ):
        generate(ac_wb, "tiny-magnet", MusicRequest("x", duration_s=1.0, seed=1, decoder="mbd"),
                 progress=progress, cancel=stop, threads=1)  # fmt: skip
    assert list_artifacts(ac_wb) == []
    again = generate(
        ac_wb, "tiny-magnet", MusicRequest("x", duration_s=0.5, seed=1, decoder="mbd"), threads=1
    )
    assert np.isfinite(again.result.audio[0]).all()  # the worker and its MBD are still there


@pytest.mark.slow
def test_mbd_needs_a_snapshot_named_by_the_model(ac_wb):
    import shutil

    from harmonia.generation import generate

    shutil.copytree(ac_wb.root / "models" / "tiny-magnet", ac_wb.root / "models" / "tiny-magnet-plain")
    with pytest.raises(RequestError) as caught:
        generate(
            ac_wb, "tiny-magnet-plain", MusicRequest("x", duration_s=1.0, seed=0, decoder="mbd"), threads=1
        )
    assert str(caught.value) == (
        "decoder mbd: model 'tiny-magnet-plain' names no Multi-Band Diffusion snapshot; add 'mbd: NAME' to its "
        "params.yaml entry (e.g. mbd: multiband-diffusion), or use --decoder encodec."
    )
    assert list_artifacts(ac_wb) == []


@pytest.mark.slow
def test_a_t5_conditioner_reads_its_local_text_encoder_snapshot(ac_wb):
    import shutil

    from harmonia.generation import generate

    done = generate(
        ac_wb, "tiny-audiogen-t5", SampleRequest("rain on a roof", duration_s=1.0, seed=2), threads=1
    )
    m = done.artifact.manifest
    assert done.result.sample_rate == 16_000 and np.isfinite(done.result.audio[0]).all()
    te = m.engine.details["text_encoder"]
    assert (te["model"], te["t5"], te["d_model"]) == ("tiny-t5", "t5-base", 768)
    assert m.identity["companions"]["text_encoder"] == ["tiny-t5", te["inventory_digest"]]
    other = generate(
        ac_wb, "tiny-audiogen-t5", SampleRequest("a dog barking", duration_s=1.0, seed=2), threads=1
    )
    assert other.result.audio[0].tobytes() != done.result.audio[0].tobytes()  # T5 reads the prompt
    shutil.copytree(
        ac_wb.root / "models" / "tiny-audiogen-t5", ac_wb.root / "models" / "tiny-audiogen-t5-bare"
    )
    with pytest.raises(RequestError) as caught:
        generate(ac_wb, "tiny-audiogen-t5-bare", SampleRequest("x", duration_s=1.0, seed=0), threads=1)
    assert str(caught.value) == (
        "Model 'tiny-audiogen-t5-bare' conditions on T5 't5-base', which Harmonia loads from a local snapshot, "
        "never by name from the hub: add 'text_encoder: t5-base' to its params.yaml entry (a model entry for "
        "t5-base, fetched with `harmonia models fetch t5-base`)."
    )


@pytest.mark.slow
def test_a_started_worker_has_no_token_in_its_environment(worker_env, monkeypatch):
    from harmonia.engines.audiocraft import Worker

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        monkeypatch.setenv(name, "hf_secret")
    worker = Worker(worker_env)
    try:
        assert worker.hello()["protocol"]  # it runs: it has exec'd (before, /proc showed the parent's copy)
        raw = Path(f"/proc/{worker.process.pid}/environ").read_bytes()
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    finally:
        worker.close()
    assert b"hf_secret" not in raw
    assert not {b"HF_TOKEN", b"HUGGING_FACE_HUB_TOKEN", b"HUGGINGFACE_HUB_TOKEN"} & set(env)
    assert env[b"HF_HUB_OFFLINE"] == b"1"


@pytest.mark.slow
def test_a_t5_rebuilt_in_the_process_is_the_one_the_id_names(ac_wb):
    """Before: the engine cached with the old T5 made the old bytes under an id naming the new T5."""
    from harmonia.generation import generate, reproduce
    from harmonia.tiny import build_tiny

    request = SampleRequest("rain on a roof", duration_s=1.0, seed=2)
    first = generate(ac_wb, "tiny-audiogen-t5", request, threads=1)
    build_tiny(ac_wb, "t5", seed=1)  # the T5 snapshot changes; the model's does not
    second = generate(ac_wb, "tiny-audiogen-t5", request, threads=1)
    m = second.artifact.manifest
    named = m.identity["companions"]["text_encoder"]
    assert not second.cached and named != first.artifact.manifest.identity["companions"]["text_encoder"]
    assert m.engine.details["text_encoder"]["inventory_digest"] == named[1]
    assert second.result.audio[0].tobytes() != first.result.audio[0].tobytes()
    assert reproduce(ac_wb, second.artifact.id).identical


@pytest.mark.slow
def test_a_t5_overwritten_while_in_use_stops_the_artifact(ac_wb, tmp_path, monkeypatch):
    """Before: only the main model was checked after a generation: a same-size overwrite of the T5
    between its verification and the worker's read made an artifact under the clean T5's id."""
    import shutil

    import harmonia.engines.audiocraft as ac
    from harmonia.errors import VerificationError
    from harmonia.generation import generate
    from harmonia.tiny import build_tiny

    other = (
        build_tiny(_workbench(tmp_path / "other"), "t5", name="tiny-t5", seed=1).path / "model.safetensors"
    )
    target = ac_wb.snapshot_dir("model", "tiny-t5") / "model.safetensors"
    assert other.stat().st_size == target.stat().st_size
    real = ac._load_in_worker

    def racing(*args, **kwargs):  # a writer lands after the load verified the T5, before the worker reads it
        shutil.copyfile(other, target)
        return real(*args, **kwargs)

    monkeypatch.setattr(ac, "_load_in_worker", racing)
    with pytest.raises(VerificationError) as caught:
        generate(
            ac_wb, "tiny-audiogen-t5", SampleRequest("rain on a roof", duration_s=1.0, seed=2), threads=1
        )
    assert str(caught.value) == (
        "Model 'tiny-t5' changed on disk while it was in use (model.safetensors); nothing was written. "
        "Run 'harmonia models verify --full tiny-t5', then generate again."
    )
    assert list_artifacts(ac_wb) == []


def _load_standin(relative: str):
    """A stand-in module loaded under a private name (never as xformers or torchaudio here)."""
    import importlib.util

    path = REPO_ROOT / "harmonia" / "workers" / "standins" / relative
    spec = importlib.util.spec_from_file_location("standin_" + relative.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_attention_standin_matches_plain_attention():
    import torch

    ops = _load_standin("xformers/ops.py")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 4, 8, generator=g) for _ in range(3))  # xformers' [batch, time, heads, dim]

    def reference(bias):
        scores = torch.einsum("bthd,bshd->bhts", q, k) / 8**0.5 + bias
        return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)

    causal = torch.full((7, 7), float("-inf")).triu(1)
    got = ops.memory_efficient_attention(q, k, v, ops.LowerTriangularMask())
    assert got.shape == (2, 7, 4, 8) and (got - reference(causal)).abs().max() < 5e-7
    bias = torch.randn(2, 4, 7, 7, generator=g)
    assert (ops.memory_efficient_attention(q, k, v, bias) - reference(bias)).abs().max() < 5e-7
    assert [t.shape for t in ops.unbind(torch.zeros(2, 3, 5), dim=1)] == [(2, 5)] * 3


def test_the_spectrogram_standin_is_the_hann_power_spectrogram():
    import torch

    transforms = _load_standin("torchaudio/transforms.py")
    wave = torch.sin(torch.arange(4000) * 2 * torch.pi * 440 / 16000)[None]
    spec = transforms.Spectrogram(n_fft=512, hop_length=128, power=2, normalized=True)(wave)
    assert spec.shape == (1, 257, 4000 // 128 + 1)
    assert int(spec[0].mean(-1).argmax()) == round(440 * 512 / 16000)  # the tone's bin
    window = torch.hann_window(512)
    plain = torch.stft(wave, 512, 128, 512, window, center=True, return_complex=True).abs().pow(2)
    assert torch.allclose(spec, plain / window.pow(2).sum(), rtol=1e-5, atol=1e-9)
