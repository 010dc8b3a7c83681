"""The DVC pipeline's stages: verify, generate, evaluate, report, samples, video, and the songs
stages (songs, stems, transcribe, evaluate-songs; see dvc.yaml).

Each stage reads its own section of params.yaml, takes its paths from the command line
(`harmonia pipeline STAGE ...`), and calls the same functions as the CLI and the notebooks:
``verify``, ``generate`` (so re-runs are artifact-store cache hits), the evaluation
functions, and papermill.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import soundfile as sf

from harmonia.datasets import load_prompts
from harmonia.defaults import kind_defaults
from harmonia.errors import ParamsError
from harmonia.evaluation import SILENCE_DBFS, ClapScorer, signal_facts, write_json
from harmonia.generation import generate
from harmonia.snapshots import require_present, verify
from harmonia.workbench import Workbench

INDEX_FILE = "index.json"


def _section(wb: Workbench, name: str) -> dict:
    section = wb.params.get(name)
    if not isinstance(section, dict):
        raise ParamsError(
            f"params.yaml has no '{name}:' section; the pipeline needs it (see the README's Pipeline part)."
        )
    return section


def stage_verify(wb: Workbench, out: Path) -> dict:
    """Verify every model and dataset the pipeline uses; write the reports; fail if any is off."""
    pipeline = _section(wb, "pipeline")
    sets = _section(wb, "prompt_sets")
    targets = [("model", m) for m in pipeline.get("models", [])]
    targets += [("model", m) for m in pipeline.get("sample_models", []) if ("model", m) not in targets]
    if pipeline.get("song_models"):  # the songs stages use these too
        songs = wb.params.get("songs") or {}
        named = [*pipeline["song_models"], songs.get("stems_model"), songs.get("transcribe_model")]
        targets += [("model", m) for m in named if m and ("model", m) not in targets]
    targets += [("model", m) for m in pipeline.get("video_models", []) if ("model", m) not in targets]
    targets += sorted({("dataset", sets[s]["dataset"]) for s in pipeline.get("prompt_sets", [])})
    clap = (wb.params.get("evaluate") or {}).get("clap_model")
    if clap:
        targets.append(("model", clap))
    require_present(wb, targets)  # a fresh clone: one sentence saying what to fetch or build first
    reports = [
        verify(wb, kind, name, full=bool(pipeline.get("verify_full", False))) for kind, name in targets
    ]
    result = {"ok": all(r.ok for r in reports), "snapshots": [r.to_json() for r in reports]}
    for r in result["snapshots"]:
        r.pop("seconds"), r.pop("hashed"), r.pop("skipped"), r.pop("bytes_hashed")  # keep the file stable
    write_json(out, result)
    if not result["ok"]:
        failed = "; ".join(r.summary() for r in reports if not r.ok)
        raise ParamsError(
            f"verification failed: {failed}. Restore the snapshots, then run 'dvc repro' again."
        )
    return result


def stage_generate(wb: Workbench, prompt_set: str, model: str, out: Path, progress=None) -> dict:
    """Generate every prompt of a prompt set with one model, once per seed, in batches.

    ``music.batch_size`` prompts share one generation (one artifact): on two cores a batch of
    4 gives 1.8-2.6 times the takes per second of one-by-one, by precision
    (benchmarks/bench_generate.py), and memory for keys and values grows with it. The batch size is part of what a take is:
    takes of one seed share one random stream per batch.

    Writes ``out/index.json`` and a copy of each take (``<prompt id>-s<seed>.<fmt>``) so DVC
    tracks what evaluation reads; the artifacts (with manifests) stay in artifacts/.
    """
    sets = _section(wb, "prompt_sets")
    if prompt_set not in sets:
        raise ParamsError(f"Unknown prompt set '{prompt_set}'. Known prompt sets: {', '.join(sorted(sets))}.")
    spec = sets[prompt_set]
    music = kind_defaults(wb, "music")  # the same defaults as `harmonia generate music` and the studio
    size = music.batch_size
    seeds = _section(wb, "pipeline").get("seeds", [0])
    prompts = load_prompts(wb, spec["dataset"], spec.get("limit"))
    fmt = music.output.format
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    takes = []
    batches = [(seed, prompts[i : i + size]) for seed in seeds for i in range(0, len(prompts), size)]
    requests = [music.request_for(tuple(p["caption"] for p in batch), seed=seed) for seed, batch in batches]
    executor = _section(wb, "pipeline").get("executor", "inline")
    if executor == "inline":  # here, one generation after another (progress per decoding step)
        made = [generate(wb, model, r, progress=progress, **music.run_settings()).artifact for r in requests]
    else:  # a batch on the local pool or Ray: the same path per generation, progress per generation
        made = _run_as_batch(wb, executor, model, requests, music.run_settings(), progress)
    for (seed, batch), art in zip(batches, made, strict=True):
        for entry, output in zip(batch, art.outputs, strict=True):
            name = f"{entry['id']}-s{seed}.{fmt}"
            _link_or_copy(art.file(output), out / name)
            takes.append(
                {"prompt_id": entry["id"], "caption": entry["caption"], "tags": entry.get("tags", []), "seed": seed,
                 "artifact": art.id, "take": output.path, "file": name, "sha256": output.sha256}
            )  # fmt: skip
    index = {"prompt_set": prompt_set, "model": model, "takes": takes}
    write_json(out / INDEX_FILE, index)
    return index


def _run_as_batch(wb: Workbench, executor: str, model: str, requests: list, settings: dict, progress) -> list:
    """The stage's generations as one batch (``pipeline.executor: local`` or ``ray``); all must succeed."""
    from harmonia.artifacts import load_artifact
    from harmonia.batch import EXECUTORS, executor_config, request_rows, run_batch

    if executor not in EXECUTORS:
        raise ParamsError(
            f"params.yaml: pipeline.executor must be inline, {' or '.join(EXECUTORS)}, got {executor!r}."
        )
    config = executor_config(wb, executor=executor)
    rows = request_rows("music", model, requests, settings, threads=config.threads)
    count = 0

    def on_row(result) -> None:
        nonlocal count
        count += 1
        if progress is not None:
            progress(count, len(rows))

    report = run_batch(wb, rows, config, on_row=on_row)
    if report.failed:
        first = report.failed[0]
        raise ParamsError(
            f"generate: {len(report.failed)} of {len(rows)} generations failed on {executor}; first: "
            f"{first.where}: {first.error}. Fix it and run 'dvc repro' again (what was made is kept)."
        )
    return [load_artifact(wb, r.artifact) for r in report.results]


def stage_samples(wb: Workbench, model: str, out: Path, progress=None) -> dict:
    """Render ``samples.prompts`` with one model, once per pipeline seed, into one pack folder.

    Each prompt is one ``harmonia generate sample`` request with the ``samples:`` defaults (so
    a re-run is a cache hit and ``dvc exp run -S samples.bpm=100`` a sweep); its takes are
    linked into ``out/<type folder>/NNN-sSEED-tTAKE.wav`` and listed in ``out/pack.json`` with
    their artifact, sha256 and the engine's facts (a loop's seam and measured tempo).
    """
    from harmonia.samples import PACK_FOLDERS

    samples = kind_defaults(wb, "sample")  # the same defaults as `harmonia generate sample`
    if not samples.prompts:
        raise ParamsError(
            "params.yaml: samples.prompts is empty; list the prompts the samples stage renders into its pack."
        )
    seeds = _section(wb, "pipeline").get("seeds", [0])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    takes, artifacts = [], []
    for seed in seeds:
        for number, prompt in enumerate(samples.prompts, start=1):
            request = samples.request_for((prompt,), seed=seed)
            art = generate(wb, model, request, progress=progress, **samples.run_settings()).artifact
            artifacts.append(art.id)
            details = art.manifest.engine.details
            folder = PACK_FOLDERS.get(details["type"], details["type"])
            for output, facts in zip(art.outputs, details["takes"], strict=True):
                name = f"{folder}/{number:03d}-s{seed}-t{facts['take']}{Path(output.path).suffix}"
                (out / name).parent.mkdir(exist_ok=True)
                _link_or_copy(art.file(output), out / name)
                takes.append(
                    {"prompt": prompt, "seed": facts["seed"], "artifact": art.id, "take": output.path, "file": name,
                     "sha256": output.sha256, "duration_s": output.duration_s, "loop": facts.get("loop")}
                )  # fmt: skip
    index = {
        "model": model,
        "type": samples.request.get("type", "sfx"),
        "artifacts": artifacts,
        "takes": takes,
    }
    write_json(out / "pack.json", index)
    return index


def stage_video(wb: Workbench, model: str, soundtrack: Path, out: Path, progress=None, notice=None) -> dict:
    """Render the music video of a pipeline's music take with one model, once per pipeline seed.

    The soundtrack is the first take of a generate stage's folder (``soundtrack/index.json``):
    its artifact is the video's parent. ``video.prompts`` are the shots, in order, each given
    an equal part of the track (the engine snaps the cuts to the track's bars); the other
    ``video:`` defaults (size, fps, steps) are those of ``harmonia generate video``. Each video
    is linked as ``out/music-video-sSEED.mp4`` and listed in ``out/index.json``.
    """
    import json

    from harmonia.generation import From

    video = kind_defaults(wb, "video")  # the same defaults as `harmonia generate video`
    if not video.prompts:
        raise ParamsError(
            "params.yaml: video.prompts is empty; list the shots' prompts the video stage cuts to the track."
        )
    index_file = soundtrack / INDEX_FILE
    if not index_file.is_file():
        raise ParamsError(
            f"{index_file} is missing: the video stage takes its soundtrack from a generate stage's folder; "
            "run 'dvc repro' (or set pipeline.video_soundtrack to a generated folder)."
        )
    takes = json.loads(index_file.read_text(encoding="utf-8"))["takes"]
    if not takes:
        raise ParamsError(f"{index_file} lists no takes: there is no track to cut the video to.")
    take = takes[0]
    duration = sf.info(str(soundtrack / take["file"])).duration
    part = duration / len(video.prompts)
    shots = [
        {"start": round(i * part, 6), "end": round((i + 1) * part, 6) if i + 1 < len(video.prompts) else duration,
         "prompt": prompt}
        for i, prompt in enumerate(video.prompts)
    ]  # fmt: skip
    seeds = _section(wb, "pipeline").get("seeds", [0])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    videos = []
    for seed in seeds:
        request = video.request_for(
            (), seed=seed, soundtrack=From(take["artifact"], take["take"]), shots=shots
        )
        art = generate(wb, model, request, progress=progress, notice=notice, **video.run_settings()).artifact
        (output,) = art.outputs
        name = f"music-video-s{seed}.mp4"
        _link_or_copy(art.file(output), out / name)
        videos.append(
            {"seed": seed, "artifact": art.id, "file": name, "sha256": output.sha256, "soundtrack": take["artifact"],
             "duration_s": output.duration_s, "frames": output.frame_count,
             "shots": art.manifest.engine.details["shots"]}
        )  # fmt: skip
    index = {"model": model, "soundtrack": str(soundtrack), "videos": videos}
    write_json(out / INDEX_FILE, index)
    return index


def stage_evaluate(wb: Workbench, generated: Path, metrics_out: Path, plots_out: Path) -> dict:
    """Signal facts (and CLAP alignment, when configured) per take; means as metrics, rows as plots."""
    import json

    settings = wb.params.get("evaluate") or {}
    index = json.loads((generated / INDEX_FILE).read_text(encoding="utf-8"))
    silence = float(settings.get("silence_threshold_dbfs", SILENCE_DBFS))
    rows, clips = [], []
    for take in index["takes"]:
        data, rate = sf.read(generated / take["file"], dtype="float32", always_2d=True)
        clips.append((data.T, rate))
        rows.append(
            {"prompt": take["prompt_id"], "seed": take["seed"], **signal_facts(data.T, rate, silence)}
        )
    if settings.get("clap_model"):
        scorer = ClapScorer.load(wb, settings["clap_model"])
        scores = scorer.score([t["caption"] for t in index["takes"]], clips)
        for row, score in zip(rows, scores, strict=True):
            row["clap_score"] = score
    metrics = {"prompt_set": index["prompt_set"], "model": index["model"], "takes": len(rows)}
    for key in rows[0] if rows else []:
        values = [r[key] for r in rows if isinstance(r[key], int | float) and key not in ("seed",)]
        if values and key not in ("prompt",):
            metrics[f"mean_{key}"] = round(sum(values) / len(values), 6)
    write_json(metrics_out, metrics)
    write_json(plots_out, rows)
    return metrics


def stage_report(wb: Workbench, out_dir: Path, timeout_s: int = 600) -> tuple[Path, Path]:
    """Run notebooks/report.ipynb with papermill over metrics/ and plots/; write it and its HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from harmonia.notebooks import KERNEL, ensure_kernel

    ensure_kernel(KERNEL)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "report.ipynb"
    papermill.execute_notebook(
        str(wb.root / "notebooks" / "report.ipynb"),
        str(executed),
        parameters={
            "metrics_dir": str(wb.root / "metrics"),
            "plots_dir": str(wb.root / "plots"),
            "generated_dir": str(wb.root / "generated"),
        },
        kernel_name=KERNEL,
        cwd=str(wb.root / "notebooks"),
        execution_timeout=timeout_s,
        progress_bar=False,
    )
    html, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    page = out_dir / "report.html"
    page.write_text(html, encoding="utf-8")
    return executed, page


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# -- songs: generate -> stems -> transcribe -> evaluate (dvc.yaml's songs stages) -------------
SONGS_INDEX = "songs.json"


def song_list(wb: Workbench) -> list[dict]:
    """params.yaml's ``songs.songs``: the songs the songs stage makes, each a style and lyrics."""
    entries = (wb.params.get("songs") or {}).get("songs") or []
    if not isinstance(entries, list) or not entries:
        raise ParamsError(
            "params.yaml: songs.songs is empty; list the songs the songs stage makes, each "
            "{style: TEXT, lyrics: TEXT with [verse] ... tags}."
        )
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("style"), str)
            or not entry["style"].strip()
        ):
            raise ParamsError(f"params.yaml: songs.songs[{i}] needs a style (text), got {entry!r:.80}.")
        if not isinstance(entry.get("lyrics", ""), str):
            raise ParamsError(
                f"params.yaml: songs.songs[{i}].lyrics must be text, got {entry.get('lyrics')!r:.60}."
            )
    return entries


def stage_songs(wb: Workbench, model: str, out: Path, progress=None) -> dict:
    """Make each of ``songs.songs`` with one model, once per pipeline seed; link the takes into ``out``."""
    songs = kind_defaults(wb, "song")  # the same defaults as `harmonia generate song`
    seeds = _section(wb, "pipeline").get("seeds", [0])
    entries = song_list(wb)
    _fresh(out)
    takes = []
    for seed in seeds:
        for number, entry in enumerate(entries, start=1):
            request = songs.request_for((entry["style"],), seed=seed, lyrics=entry.get("lyrics", ""))
            art = generate(wb, model, request, progress=progress, **songs.run_settings()).artifact
            output = art.outputs[0]
            name = f"{number:03d}-s{seed}{Path(output.path).suffix}"
            _link_or_copy(art.file(output), out / name)
            takes.append({"song": number, "style": entry["style"], "seed": seed, "artifact": art.id,
                          "file": name, "sha256": output.sha256, "duration_s": output.duration_s})  # fmt: skip
    index = {"model": model, "takes": takes}
    write_json(out / SONGS_INDEX, index)
    return index


def stage_stems(wb: Workbench, songs_dir: Path, out: Path, model: str | None = None, progress=None) -> dict:
    """Split every song of a songs stage into stems (``songs.stems_model``); link the vocals into ``out``."""
    import json

    from harmonia.songs import stems

    index = json.loads((songs_dir / SONGS_INDEX).read_text(encoding="utf-8"))
    _fresh(out)
    for take in index["takes"]:
        art = stems(wb, take["artifact"], model=model, progress=progress).artifact
        take["stems"] = art.id
        take["stems_sum_max_abs_diff"] = art.manifest.engine.details["sum_max_abs_diff"]
        take["stems_sum_snr_db"] = art.manifest.engine.details["sum_snr_db"]
        _link_or_copy(
            art.file(next(o for o in art.outputs if o.path == "vocals.wav")),
            out / f"{Path(take['file']).stem}-vocals.wav",
        )
    write_json(out / SONGS_INDEX, index)
    return index


def stage_transcribe(
    wb: Workbench, stems_dir: Path, out: Path, model: str | None = None, progress=None
) -> dict:
    """Transcribe every song's vocal stem (``songs.transcribe_model``) against its lyrics."""
    import json

    from harmonia.songs import transcribe

    index = json.loads((stems_dir / SONGS_INDEX).read_text(encoding="utf-8"))
    _fresh(out)
    for take in index["takes"]:
        art = transcribe(wb, take["stems"], model=model, progress=progress).artifact
        details = art.manifest.engine.details
        take["transcript"] = art.id
        take["text"] = details["transcript"]
        take["intelligibility"] = details["intelligibility"]
    write_json(out / SONGS_INDEX, index)
    return index


def stage_evaluate_songs(
    wb: Workbench, transcripts_dir: Path, songs_dir: Path, metrics_out: Path, plots_out: Path
) -> dict:
    """Per take: WER and CER against the lyrics, the stems' sum error, signal facts; means as metrics."""
    import json

    settings = wb.params.get("evaluate") or {}
    silence = float(settings.get("silence_threshold_dbfs", SILENCE_DBFS))
    index = json.loads((transcripts_dir / SONGS_INDEX).read_text(encoding="utf-8"))
    rows = []
    for take in index["takes"]:
        data, rate = sf.read(songs_dir / take["file"], dtype="float32", always_2d=True)
        scores = take.get("intelligibility") or {}
        rows.append({"song": take["song"], "seed": take["seed"], "artifact": take["artifact"],
                     "wer": scores.get("wer"), "cer": scores.get("cer"), "transcript": take.get("text"),
                     "stems_sum_max_abs_diff": take.get("stems_sum_max_abs_diff"),
                     **signal_facts(data.T, rate, silence)})  # fmt: skip
    metrics = {"model": index["model"], "takes": len(rows)}
    for key in ("wer", "cer", "stems_sum_max_abs_diff", "loudness_lufs", "true_peak_dbtp"):
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            metrics[f"mean_{key}"] = round(sum(values) / len(values), 6)
    write_json(metrics_out, metrics)
    write_json(plots_out, rows)
    return metrics


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
