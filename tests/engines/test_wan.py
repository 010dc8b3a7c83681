"""The wan engine on the tiny model: clips read back from the MP4, same bytes across processes,
every refusal before the model loads, progress and cancel, the time estimate, and the music
video: shots snapped to bars, one seed per shot, the track's duration and audio, lineage, reproduce."""

import json
import threading

import av
import numpy as np
import pytest
import soundfile as sf

from harmonia.artifacts import list_artifacts
from harmonia.engines.wan import WanEngine, clip_frames
from harmonia.errors import ArtifactError, AudioError, Cancelled, RequestError
from harmonia.generation import From, generate, load_engine, reproduce
from harmonia.requests import MusicRequest, Shot, VideoRequest
from harmonia.shots import bar_lines, frame_plan, snap_to_bars
from tests.conftest import REPO_ROOT, run_cli

MODEL = "tiny-wan"
SIZE = dict(width=32, height=32)
AAC_SNR_DB = 20.0  # AAC at its default bitrate keeps a tone-and-click track well above this (measured ~40 dB)


def click_track(path, bpm=120.0, seconds=4.2, rate=22050, first_s=0.25):
    """A kick on every beat (a low one on each bar's first) over a quiet hum: a track with bars."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.05 * np.sin(2 * np.pi * 220 * t)
    n = int(0.05 * rate)
    for k, beat in enumerate(np.arange(first_s, seconds, 60.0 / bpm)):
        i = int(beat * rate)
        tone = 120 if k % 4 == 0 else 880
        x[i : i + n] += np.sin(2 * np.pi * tone * t[: len(x[i : i + n])]) * np.exp(
            -t[: len(x[i : i + n])] * 60
        )
    sf.write(path, (0.5 * np.stack([x, x], 1)).astype(np.float32), rate, subtype="FLOAT")
    return path


def read_mp4(path):
    """(frames uint8 [n, h, w, 3], fps, audio float32 [channels, samples] or None, its rate)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    audio, rate = None, None
    with av.open(str(path)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            rate = stream.rate
            audio = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)
    return frames, fps, audio, rate


@pytest.fixture
def engine(video_wb):
    return load_engine(video_wb, MODEL, threads=2)


def test_a_clip_has_the_frames_size_and_rate_asked_for(video_wb):
    request = VideoRequest("a paper boat on a stream", width=48, height=32, frames=9, fps=12, steps=2, seed=1)
    done = generate(video_wb, MODEL, request, threads=2)
    art = done.artifact
    (out,) = art.outputs
    frames, fps, audio, _ = read_mp4(art.file(out))
    assert frames.shape == (9, 32, 48, 3) and fps == 12 and audio is None
    assert (out.media, out.width, out.height, out.frame_count, out.fps) == ("video", 48, 32, 9, 12.0)
    assert out.duration_s == pytest.approx(9 / 12) and art.kind == "video"
    assert (art.path / "take-0.png").is_file() and (art.path / "take-0-sheet.png").is_file()
    (clip,) = art.manifest.engine.details["clips"]
    assert clip == {
        "index": 0,
        "seed": 1,
        "frames": 9,
        "generated_frames": 9,
        "prompt": "a paper boat on a stream",
    }
    assert art.manifest.model.license == "mit" and art.manifest.timings.steps == 2
    # the x264 options change the bytes: recorded, and part of the id (AVX-512 never among them)
    from harmonia.media import X264_CPU_AVX512, x264_params

    assert art.manifest.runtime.paths == {"x264": x264_params()}
    assert x264_params() == "mbtree=0" or not int(x264_params().removeprefix("asm=")) & X264_CPU_AVX512
    # the frames the engine made are the frames in the file, to H.264's tolerance
    made = done.result.videos[0]
    assert made.dtype == np.uint8 and made.shape == frames.shape
    assert np.abs(made.astype(int) - frames.astype(int)).mean() < 4


@pytest.mark.slow
def test_same_request_same_bytes_across_processes(video_wb):
    request = VideoRequest("lanterns", frames=5, steps=2, seed=7, **SIZE)
    art = generate(video_wb, MODEL, request, threads=2, previews=False).artifact
    result = run_cli("reproduce", art.id, cwd=video_wb.root)
    assert result.returncode == 0, result.stderr
    assert f"{art.id}: identical (1 output, same sha256)" in result.stdout
    again = generate(video_wb, MODEL, request, threads=2, previews=False)
    assert again.cached and again.artifact.id == art.id


def test_seeds_and_prompts_change_the_clip(engine):
    a = engine.generate(VideoRequest("a", frames=5, steps=2, seed=1, **SIZE)).videos[0]
    b = engine.generate(VideoRequest("a", frames=5, steps=2, seed=2, **SIZE)).videos[0]
    c = engine.generate(VideoRequest("a", frames=5, steps=2, seed=1, **SIZE)).videos[0]
    assert a.tobytes() == c.tobytes() and a.tobytes() != b.tobytes()


def test_the_mp4_bytes_repeat_in_a_process_that_ran_the_model(engine, tmp_path):
    from harmonia.manifest import OutputSettings
    from harmonia.media import write_take

    for seed in (1, 2, 3):  # several generations first: the heap holds what torch left there
        result = engine.generate(VideoRequest(["a", "b"], width=64, height=48, frames=17, steps=2, seed=seed))
    take = result.takes[0]
    digests = []
    for i in range(6):
        (tmp_path / str(i)).mkdir()
        digests.append(write_take(tmp_path / str(i), 0, take, OutputSettings("wav", None), False).sha256)
    assert len(set(digests)) == 1, digests


WRITE_WITH_A_DIRTY_HEAP = """
import sys, numpy as np
from pathlib import Path
from harmonia.manifest import OutputSettings
from harmonia.media import VideoTake, write_take
rng = np.random.default_rng(0)
frames = np.repeat(rng.integers(0, 256, (17, 12, 16, 3), dtype=np.uint8), 4, axis=1).repeat(4, axis=2)
frames = np.clip(frames.astype(int) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
print(write_take(Path(sys.argv[1]), 0, VideoTake(frames, 8.0), OutputSettings("wav", None), False).sha256)
"""


def test_the_mp4_bytes_do_not_depend_on_what_the_allocator_hands_x264(tmp_path):
    """glibc fills each allocation with a byte when MALLOC_PERTURB_ is set: x264 reading memory it
    never wrote shows as other bytes (x264's AVX-512 code gave three hashes here: x264_params())."""
    import os
    import subprocess
    import sys

    digests = set()
    for perturb in ("1", "85", "170"):
        (tmp_path / perturb).mkdir()
        env = {**os.environ, "MALLOC_PERTURB_": perturb, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run([sys.executable, "-c", WRITE_WITH_A_DIRTY_HEAP, str(tmp_path / perturb)],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1, digests


def test_progress_counts_every_step_of_every_clip(engine):
    seen = []
    engine.generate(
        VideoRequest(["a", "b"], frames=5, steps=3, seed=1, **SIZE), progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(i, 6) for i in range(1, 7)]


def test_cancel_stops_between_steps_and_writes_nothing(video_wb):
    stop, seen = threading.Event(), []

    def progress(done, total):
        seen.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled, match=r"^Generation cancelled at step 2 of 4; no artifact was written\.$"):
        generate(video_wb, MODEL, VideoRequest("x", frames=5, steps=4, seed=1, **SIZE), progress=progress,
                 cancel=stop)  # fmt: skip
    assert seen == [1, 2]
    assert not video_wb.artifacts_dir.exists() or not any(video_wb.artifacts_dir.iterdir())


def _refused(wb, request, message, error=RequestError):
    with pytest.raises(error) as caught:
        generate(wb, MODEL, request)
    assert str(caught.value) == message
    assert not wb.artifacts_dir.exists() or not list_artifacts(wb)


def test_every_bad_request_is_refused_with_one_sentence_before_the_model_loads(
    video_wb, monkeypatch, tmp_path
):
    monkeypatch.setattr(WanEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded")))
    wb = video_wb
    _refused(
        wb, VideoRequest("x", width=250, height=32, seed=1),
        "width must be a multiple of 16 for model 'tiny-wan' (the VAE's and the transformer's downsampling), "
        "got 250; the nearest are 240 and 256.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("x", width=32, height=8 + 16, seed=1),
        "height must be a multiple of 16 for model 'tiny-wan' (the VAE's and the transformer's downsampling), "
        "got 24; the nearest are 16 and 32.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("x", width=1024, height=32, seed=1),
        "width is 1024 but model 'tiny-wan' makes at most 512 pixels a side; ask for at most 512.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("x", frames=16, seed=1, **SIZE),
        "frames must be 4k+1 for model 'tiny-wan' (its VAE packs 4 frames into one after the first), got 16; "
        "the nearest are 13 and 17.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("x", frames=2, seed=1, **SIZE),
        "frames must be 4k+1 for model 'tiny-wan' (its VAE packs 4 frames into one after the first), got 2; "
        "the nearest are 1 and 5.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("x", frames=129, seed=1, **SIZE),
        "frames is 129 but model 'tiny-wan' makes at most 125 frames a clip; ask for at most 125.",
    )  # fmt: skip
    _refused(wb, VideoRequest("x", fps=0, seed=1, **SIZE), "fps must be > 0 and <= 120 frames/s, got 0.")
    _refused(
        wb, VideoRequest("x", fps=-8.0, seed=1, **SIZE), "fps must be > 0 and <= 120 frames/s, got -8.0."
    )
    _refused(
        wb, VideoRequest("x", steps=0, seed=1, **SIZE), "steps must be an integer in [1, 1000] steps, got 0."
    )
    _refused(wb, VideoRequest("  ", seed=1, **SIZE), "prompts[0] is empty: describe what the clip shows.")
    _refused(
        wb, VideoRequest((), seed=1, **SIZE),
        "prompts must not be empty: give a prompt, or --soundtrack and --shots for a music video.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("x", negative_prompt=" ", seed=1, **SIZE),
        "negative_prompt must be text naming what to avoid, got ' '. Leave it out or describe it.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest("a b " * 40, seed=1, **SIZE),
        "prompts[0] is 81 tokens long; the model's text encoder reads at most 64. Shorten it.",
    )  # fmt: skip
    with pytest.raises(RequestError) as caught:
        generate(wb, MODEL, VideoRequest("x", seed=1, **SIZE), precision="int8")
    assert str(caught.value) == (
        "precision must be exact for the wan engine (choose float32 or bfloat16 with dtype), got 'int8'."
    )


def test_bad_music_videos_are_refused_before_the_model_loads(video_wb, monkeypatch, tmp_path):
    monkeypatch.setattr(WanEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded")))
    wb = video_wb
    track = str(click_track(tmp_path / "track.wav"))  # 4.2 s
    ok = [{"start": 0, "end": 2, "prompt": "a"}, {"start": 2, "end": 4.2, "prompt": "b"}]

    def mv(shots, **kw):
        return VideoRequest(
            soundtrack=kw.pop("soundtrack", track), shots=shots, seed=1, fps=kw.pop("fps", 8), **SIZE, **kw
        )

    _refused(
        wb, mv([{"start": 0, "end": 2.5, "prompt": "a"}, {"start": 2, "end": 4.2, "prompt": "b"}]),
        "shot 1 starts at 2 s, before shot 0 ends at 2.5 s: the shots overlap. Start each shot where the previous one ends.",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 0, "end": 1.5, "prompt": "a"}, {"start": 2, "end": 4.2, "prompt": "b"}]),
        "shot 1 starts at 2 s but shot 0 ends at 1.5 s: a gap with no picture. Start each shot where the previous "
        "one ends (the first at 0).",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 1, "end": 4.2, "prompt": "a"}]),
        "shot 0 starts at 1 s but the track starts at 0 s: a gap with no picture. Start each shot where the "
        "previous one ends (the first at 0).",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 0, "end": 2, "prompt": "a"}, {"start": 2, "end": 9, "prompt": "b"}]),
        "shot 1 ends at 9 s, past the track's end (4.20 s). End the last shot at 4.20 s.",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 0, "end": 2, "prompt": "a"}, {"start": 2, "end": 3, "prompt": "b"}]),
        "the shots end at 3 s but the track lasts 4.20 s: a gap with no picture at the end. End the last shot at 4.20 s.",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 0, "end": 2, "prompt": " "}, {"start": 2, "end": 4.2, "prompt": "b"}]),
        "shot 0: the prompt is empty; say what the shot shows.",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 0, "end": 2, "prompt": "a"}, {"start": 2, "end": 4.2}]),
        "shot 1 must have exactly start, end and prompt, got ['end', 'start'].",
    )  # fmt: skip
    _refused(wb, mv([]), "shots must be a non-empty list of {start, end, prompt} objects, got [].")
    _refused(
        wb, mv(ok, prompts=("x",)),
        "a music video takes its prompts from its shots; give PROMPTs or --soundtrack and --shots, not both.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest(shots=ok, seed=1, **SIZE),
        "a music video needs a soundtrack: give --soundtrack ID (a music or song artifact) or an audio file.",
    )  # fmt: skip
    _refused(
        wb, VideoRequest(soundtrack=track, seed=1, **SIZE),
        "a music video needs a shot list: give --shots FILE|ID (a JSON list of {start, end, prompt}, or the id of "
        "a 'harmonia write shots' artifact).",
    )  # fmt: skip
    _refused(
        wb, mv([{"start": 0, "end": 4.2, "prompt": "one long shot"}], fps=40),
        "shot 0 lasts 4.20 s = 168 frames at 40 fps (its cuts on the bars); model 'tiny-wan' makes at most 125 "
        "frames (3.12 s) a clip. Split the shot.",
    )  # fmt: skip
    missing = tmp_path / "nope.json"
    _refused(
        wb, mv(str(missing)),
        f"shots: {missing} is neither a file nor an artifact; give a JSON shot list file or the id of a shot "
        "list artifact (harmonia write shots).",
    )  # fmt: skip
    # the soundtrack: missing, not audio, an artifact without audio
    with pytest.raises(AudioError, match=r"^soundtrack: "):
        generate(wb, MODEL, mv(ok, soundtrack=str(tmp_path / "missing.wav")))
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    with pytest.raises(AudioError, match=r"^soundtrack: cannot read .*notes\.txt as audio"):
        generate(wb, MODEL, mv(ok, soundtrack=str(notes)))
    with pytest.raises(ArtifactError):
        generate(wb, MODEL, mv(ok, soundtrack=From("abcdef12")))
    assert not wb.artifacts_dir.exists() or not list_artifacts(wb)


def test_shots_snap_to_bars_and_fill_the_track_in_frames(tmp_path):
    from harmonia.audio import read_audio

    clip = read_audio(str(click_track(tmp_path / "t.wav", bpm=120, seconds=8.3)), "track")
    bars, tempo = bar_lines(clip.samples, clip.sample_rate)
    assert tempo == pytest.approx(120, abs=1.5)
    assert bars[0] == pytest.approx(0.25, abs=0.03) and np.diff(bars) == pytest.approx(2.0, abs=0.05)
    shots = (Shot(0, 1.9, "a"), Shot(1.9, 4.5, "b"), Shot(4.5, 4.8, "c"), Shot(4.8, 8.3, "d"))
    snapped, how = snap_to_bars(shots, bars)
    assert how == ("bar", "bar", "kept")  # 4.8's nearest bar (4.25) is before the previous cut
    assert snapped[0].end_s == bars[1] and snapped[1].end_s == bars[2] and snapped[2].end_s == 4.8
    assert snapped[0].start_s == 0 and snapped[-1].end_s == 8.3
    frames = frame_plan(snapped, 16.0)
    assert sum(frames) == round(8.3 * 16) and all(n >= 1 for n in frames)
    assert [clip_frames(n) for n in (1, 2, 5, 6, 33)] == [1, 5, 5, 9, 33]


def test_the_music_video_lasts_as_long_as_its_track_and_reproduces(video_wb, tmp_path):
    # the soundtrack is a music artifact: a parent
    music = generate(
        video_wb, "tiny-musicgen", MusicRequest("drums", duration_s=2.0, seed=1), previews=False
    ).artifact
    shots = tmp_path / "shots.json"
    shots.write_text(json.dumps([{"start": 0, "end": 1.2, "prompt": "city lights"},
                                 {"start": 1.2, "end": 2.0, "prompt": "rain on glass"}]))  # fmt: skip
    request = VideoRequest(soundtrack=From(music.id), shots=str(shots), fps=8, steps=2, seed=5, **SIZE)
    notes = []
    done = generate(video_wb, MODEL, request, threads=2, notice=notes.append)
    art = done.artifact
    (out,) = art.outputs
    frames, fps, audio, rate = read_mp4(art.file(out))
    track = music.manifest.outputs[0]
    track_samples, track_rate = sf.read(music.file(track), dtype="float32", always_2d=True)
    # duration: the track's, to within a frame; the audio decodes to the track (AAC's tolerance)
    assert fps == 8 and frames.shape[1:] == (32, 32, 3)
    assert abs(len(frames) / fps - track.duration_s) <= 1 / fps / 2
    assert out.frame_count == len(frames) == round(2.0 * 8) and out.sample_rate == track_rate
    assert rate == track_rate and audio.shape[1] >= track_samples.shape[0]
    reference = track_samples.T[:, : audio.shape[1]]
    decoded = audio[: reference.shape[0], : reference.shape[1]]
    error = decoded - reference
    snr = 10 * np.log10(np.sum(reference**2) / np.sum(error**2))
    assert snr > AAC_SNR_DB, snr
    # lineage, seeds per shot, the shots as cut, the estimate said before it started
    (parent,) = art.manifest.parents
    assert (parent.id, parent.role, parent.kind, parent.file) == (
        music.id,
        "soundtrack",
        "music",
        "take-0.wav",
    )
    assert art.manifest.inputs["soundtrack"].sha256 == track.sha256
    details = art.manifest.engine.details
    assert [s["seed"] for s in details["shots"]] == [5, 6]
    assert [s["prompt"] for s in details["shots"]] == ["city lights", "rain on glass"]
    assert sum(s["frames"] for s in details["shots"]) == len(frames)
    assert details["shots"][-1]["end_s"] == pytest.approx(2.0) and "timeline" in details
    assert art.manifest.request["shots"][0] == {"start": 0.0, "end": 1.2, "prompt": "city lights"}
    assert len(notes) == 1 and notes[0].startswith("estimate: about ") and "2 clip(s) of 2 steps" in notes[0]
    assert {lic.model for lic in art.manifest.licenses} == {"tiny-wan", "tiny-musicgen"}
    verdict = reproduce(video_wb, art.id)
    assert verdict.identical, verdict.summary()


def test_the_estimate_uses_the_seconds_per_step_measured_on_this_machine(engine):
    request = VideoRequest("x", frames=5, steps=3, seed=1, **SIZE)
    first = engine.estimate(request)
    assert "(measured now)" in first and "decoding not measured yet" in first
    cache = json.loads((engine.state_dir / "calibration.json").read_text())
    (key,) = [k for k in cache if "32x32x5" in k]
    assert key.endswith("seconds per step") and cache[key]["step_s"] > 0
    engine.generate(request)  # a run keeps its own measurement, with what it spent outside the steps
    second = engine.estimate(request)
    assert "(cached)" in second and "decoding not measured" not in second


def test_the_tiny_builder_gives_the_same_bytes(tmp_path, tiny_wan):
    from harmonia.tiny import build_tiny
    from harmonia.workbench import Workbench
    from tests.conftest import VIDEO_PARAMS

    (tmp_path / "params.yaml").write_text(VIDEO_PARAMS)
    built = build_tiny(Workbench.open(tmp_path), "wan", name=MODEL, seed=0)
    first = json.loads((tiny_wan / MODEL / "inventory.json").read_text())
    assert {f.path: f.sha256 for f in built.inventory.files} == {
        f["path"]: f["sha256"] for f in first["files"]
    }
    assert {f.path for f in built.inventory.files} >= {
        "model_index.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
