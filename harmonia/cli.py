"""The ``harmonia`` command line: a thin layer over the package's functions.

Every command calls the same function a notebook or a pipeline stage would; this module
only parses arguments, draws progress bars and prints. Errors Harmonia raises on purpose
are printed as one ``error:`` line (exit code 2); a failed verification exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from tqdm import tqdm

from harmonia import __version__
from harmonia.engines import KINDS
from harmonia.errors import HarmoniaError, RequestError
from harmonia.terminal import printable
from harmonia.workbench import KINDS as SNAPSHOT_KINDS
from harmonia.workbench import PICKLE_PATTERNS, Kind, Workbench, plural

EXIT_FAILED = 1
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        harmonia 0.1.0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.run(args) or 0
    except HarmoniaError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonia",
        description="Local, reproducible generation of music and words: snapshots, engines, artifacts.",
    )
    parser.add_argument("--version", action="version", version=f"harmonia {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for kind in SNAPSHOT_KINDS:
        _add_snapshot_commands(commands, kind)
    _add_generation_commands(commands)
    _add_write_command(commands)
    _add_batch_command(commands)
    return parser


def _add_generation_commands(commands) -> None:
    group = commands.add_parser("generate", help="generate media into artifacts/")
    sub = group.add_subparsers(title="kinds", metavar="KIND", required=True)
    for info in KINDS.values():  # one table: every kind made from prompts gets the same command shape
        if not info.prompted:
            continue
        p = sub.add_parser(info.name, help=info.help)
        _add_request_flags(p, info)
        p.set_defaults(run=_generate, kind=info.name)

    group = commands.add_parser("artifacts", help="list and show generated artifacts")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="every artifact, newest first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_artifacts_list)
    p = sub.add_parser("show", help="one artifact's manifest")
    p.add_argument("artifact", metavar="ID", help="an artifact id or a unique prefix of one")
    p.add_argument("--json", action="store_true", help="print the whole manifest")
    p.set_defaults(run=_artifacts_show)

    group = commands.add_parser("samples", help="cut audio into sample packs")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = sub.add_parser("slice", help="cut an audio artifact (or file) into a pack: one-shots and loops")
    p.add_argument("source", metavar="ARTIFACT", help="an artifact id (ID or ID/FILE) or an audio file")
    p.add_argument("--zip", action="store_true", help="also write pack.zip")
    p.add_argument("--bpm", type=float, help="the source's tempo if known [20, 400] (default: estimated)")
    p.add_argument(
        "--loop-bars", type=int, dest="loop_bars", default=1, help="bars per loop [1, 64] (default 1)"
    )
    p.add_argument(
        "--types", choices=["one-shot", "loop", "both"], default="both", help="what to cut (default: both)"
    )
    p.add_argument("--force", action="store_true", help="slice again even if the identical pack exists")
    p.set_defaults(run=_samples_slice)

    group = commands.add_parser("edit", help="repaint, extend or cover a song (a new artifact, its child)")
    sub = group.add_subparsers(title="edits", metavar="EDIT", required=True)
    r = sub.add_parser("repaint", help="regenerate a time range of a song; every other sample is kept")
    r.add_argument("--start", type=float, required=True, dest="start_s", help="range start, seconds")
    r.add_argument("--end", type=float, required=True, dest="end_s", help="range end, seconds")
    r.set_defaults(edit="repaint")
    q = sub.add_parser("extend", help="add seconds after (or --before) a song")
    q.add_argument("--seconds", type=float, required=True, dest="extend_s", help="seconds to add")
    q.add_argument("--before", action="store_true", default=None, help="add them before the song")
    q.set_defaults(edit="extend")
    c = sub.add_parser("cover", help="a new song from a song's structure")
    c.add_argument("--strength", type=float, required=True, help="[0, 1]: 1 follows the source closely")
    c.add_argument("--reference", metavar="FILE|ID", help="a clip whose timbre to follow")
    c.set_defaults(edit="cover")
    for p in (r, q, c):
        p.add_argument("song", metavar="ID", help="the song (or any audio artifact) to edit")
        p.add_argument("--style", help="the style prompt (default: the song's)")
        p.add_argument("--lyrics", metavar="FILE|TEXT|ID", help="lyrics (default: the song's)")
        p.add_argument("--seed", type=int, help="random seed (default: drawn and recorded)")
        p.add_argument("--steps", type=int, help="denoising steps (default: the song's)")
        p.add_argument("--model", help="an ace-step model (default: the song's)")
        p.add_argument("--force", action="store_true", help="make it again even if the identical edit exists")
        p.add_argument(
            "--threads", type=int, help="CPU threads (default: all cores); recorded, they change the bits"
        )
        p.set_defaults(run=_edit)

    p = commands.add_parser(
        "stems", help="split a song (any audio artifact or file) into vocals, drums, bass, other"
    )
    p.add_argument("source", metavar="ID", help="an artifact id (ID or ID/FILE) or an audio file")
    p.add_argument("--model", help="a demucs model (default: songs.stems_model in params.yaml)")
    p.add_argument("--force", action="store_true", help="split again even if the identical stems exist")
    p.add_argument(
        "--threads", type=int, help="CPU threads (default: all cores); recorded, they change the bits"
    )
    p.set_defaults(run=_stems)

    p = commands.add_parser("transcribe", help="transcribe a song's vocals; word and character error rates")
    p.add_argument(
        "source", metavar="ID", help="stems (their vocals.wav), a song, any audio artifact, or a file"
    )
    p.add_argument("--lyrics", metavar="FILE|TEXT", help="the reference (default: the song's lyrics)")
    p.add_argument("--language", help="the sung language (default: the song's, else detected)")
    p.add_argument("--model", help="a whisper model (default: songs.transcribe_model in params.yaml)")
    p.add_argument("--force", action="store_true", help="transcribe again even if the identical one exists")
    p.add_argument(
        "--threads", type=int, help="CPU threads (default: all cores); recorded, they change the bits"
    )
    p.set_defaults(run=_transcribe)

    p = commands.add_parser("reproduce", help="regenerate an artifact and compare it bit for bit")
    p.add_argument("artifact", metavar="ID", help="an artifact id or a unique prefix of one")
    p.set_defaults(run=_reproduce)

    p = commands.add_parser("doctor", help="versions, device, token, disk, snapshots")
    p.set_defaults(run=_doctor)

    p = commands.add_parser("demo", help="generate one clip end to end (what `make demo` runs)")
    p.set_defaults(run=_demo)

    p = commands.add_parser(
        "check", help="params pins, snapshots.lock and the .dvc files agree (reads no data)"
    )
    p.set_defaults(run=_check)
    p = commands.add_parser("lock", help="rewrite snapshots.lock from the present snapshots")
    p.set_defaults(run=_lock)

    group = commands.add_parser("pipeline", help="the stages dvc.yaml runs")
    sub = group.add_subparsers(title="stages", metavar="STAGE", required=True)
    p = sub.add_parser("verify", help="verify the snapshots the pipeline uses")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_verify)
    p = sub.add_parser("generate", help="generate a prompt set with a model")
    p.add_argument("--set", required=True, dest="prompt_set")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_generate)
    p = sub.add_parser("samples", help="render samples.prompts with a model into one pack")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_samples)
    p = sub.add_parser("songs", help="make songs.songs with a model, once per pipeline seed")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_songs)
    p = sub.add_parser("stems", help="split every song of a songs stage into stems")
    p.add_argument("--songs", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_stems)
    p = sub.add_parser("transcribe", help="transcribe every song's vocal stem against its lyrics")
    p.add_argument("--stems", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_transcribe)
    p = sub.add_parser("evaluate-songs", help="WER, CER, stems' sum error and signal facts per song")
    p.add_argument("--transcripts", required=True)
    p.add_argument("--songs", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--plots", required=True)
    p.set_defaults(run=_stage_evaluate_songs)
    p = sub.add_parser("video", help="render the music video of a generated music take with a model")
    p.add_argument("--model", required=True)
    p.add_argument("--soundtrack", required=True, help="a generate stage's folder (its first take)")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_video)
    p = sub.add_parser("evaluate", help="signal facts and CLAP alignment of generated takes")
    p.add_argument("--generated", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--plots", required=True)
    p.set_defaults(run=_stage_evaluate)
    p = sub.add_parser("report", help="run notebooks/report.ipynb and export HTML")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_stage_report)

    group = commands.add_parser("notebooks", help="run the notebooks unattended with papermill")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "run", help="execute notebooks/*.ipynb into an ignored folder; stop at the first error"
    )
    p.add_argument("names", nargs="*", metavar="NOTEBOOK", help="file names in notebooks/ (default: all)")
    p.add_argument(
        "--tiny", action="store_true", help="tiny-model parameters from notebooks/tiny-params.yaml"
    )
    p.add_argument(
        "--out", default="outputs/notebooks", help="where executed copies go (default: outputs/notebooks)"
    )
    p.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds (default 600)")
    p.add_argument("--kernel", default="harmonia", help="kernel name (installed for this Python if missing)")
    p.set_defaults(run=_notebooks_run)


def _add_request_flags(p: argparse.ArgumentParser, info) -> None:
    """Flags of ``generate KIND``: the request type's fields (with their limits in the help), then
    what every kind shares: model, seed, output, runtime, ideas."""
    from harmonia.engines import request_type
    from harmonia.requests import limits, options

    first = fields(request_type(info.name))[0].name  # what the PROMPT words fill
    takes_text = first in getattr(request_type(info.name), "TEXT_INPUTS", ())
    p.add_argument(
        "prompts",
        nargs="*" if takes_text else "+",
        metavar="PROMPT",
        help="one prompt per take (several make a batch)",
    )
    if takes_text:
        p.add_argument(
            "--from-text", metavar="ID[/FILE]",
            help="take the prompt(s) from a text artifact (harmonia write ...), which becomes a parent",
        )  # fmt: skip
    p.add_argument("--model", help=f"a model from params.yaml (default: {info.section}.model there)")
    p.add_argument("--seed", type=int, help="random seed (default: drawn and recorded)")
    bounds = limits(request_type(info.name))
    for name, meta in options(request_type(info.name)):
        bound = bounds.get(name)
        kind = (int if bound.integer else float) if bound else str
        extra = f" [{bound.low:g}, {bound.high:g}] {bound.unit}".rstrip() if bound else ""
        help_ = f"{meta.get('help') or name.replace('_', ' ')}{extra} (default: {info.section}.{name})"
        choices = meta.get("choices")
        if choices:
            help_ = f"{meta.get('help') or name.replace('_', ' ')}: {', '.join(choices)} (default: {info.section}.{name})"
        p.add_argument(
            meta["flag"], dest=name, type=kind, metavar=meta.get("metavar"), choices=choices, help=help_
        )
    p.add_argument(
        "--format", choices=["wav", "flac"], dest="fmt", help="wav (32-bit float) or flac (24-bit)"
    )
    p.add_argument(
        "--normalize", type=float, dest="normalize_lufs", metavar="LUFS", help="loudness target, e.g. -14"
    )
    p.add_argument("--force", action="store_true", help="regenerate even if the identical artifact exists")
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    p.add_argument("--dtype", help="float32 (default), bfloat16, float16 (GPU)")
    p.add_argument(
        "--threads", type=int, help="CPU threads (default: all cores); recorded, they change the bits"
    )
    p.add_argument(
        "--precision",
        choices=["exact", "bf16", "int8", "int4"],
        help="exact (default: plain transformers' bytes, faster), bf16, int8 or int4 (faster still; "
        "int8 and int4: CPU only)",
    )
    idea = p.add_argument_group("idea", "give any of these and each PROMPT becomes an idea's text")
    taken = {meta["flag"] for _, meta in options(request_type(info.name))}  # a request's own --key wins
    idea.add_argument("--genre")
    idea.add_argument("--mood")
    idea.add_argument("--tempo", type=float, dest="tempo_bpm", metavar="BPM")
    if "--key" not in taken:
        idea.add_argument("--key", help="e.g. 'A minor', 'Bb'")
    idea.add_argument("--instrument", action="append", dest="instruments", default=[], help="repeatable")


def _add_snapshot_commands(commands, kind: Kind) -> None:
    group = commands.add_parser(plural(kind), help=f"fetch, verify, list {plural(kind)}")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = sub.add_parser("fetch", help=f"download a {kind} declared in params.yaml at a pinned commit")
    p.add_argument("name", nargs="?", help=f"a {kind} name from params.yaml")
    p.add_argument("--all", action="store_true", help=f"every hub {kind} params.yaml declares")
    p.add_argument("--revision", help="a branch, tag or commit overriding params.yaml")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help=f"also download pickled weights ({', '.join(PICKLE_PATTERNS)}); an entry with "
        "allow_pickle: true in params.yaml gets them without it",
    )
    p.set_defaults(run=_fetch, kind=kind)

    p = sub.add_parser("verify", help=f"check {plural(kind)} against their inventories")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every present snapshot")
    p.add_argument("--full", action="store_true", help="re-hash every file, not only changed ones")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(run=_verify, kind=kind)

    p = sub.add_parser("list", help=f"declared and present {plural(kind)}")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(run=_list, kind=kind)

    if kind == "dataset":
        p = sub.add_parser("build", help="build a dataset in code (eval-prompts, synthetic-audio)")
        p.add_argument("builder", metavar="BUILDER", help="eval-prompts or synthetic-audio")
        p.add_argument("--name", help="snapshot name (default: the builder's)")
        p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
        p.set_defaults(run=_build, kind=kind)
    if kind == "model":
        p = sub.add_parser("tiny", help="build a tiny random model of an engine's architecture")
        p.add_argument(
            "builder",
            metavar="BUILDER",
            help="musicgen, musicgen-stereo, musicgen-melody, clap, lm, stable-audio, audiogen, magnet, audiogen-t5, "
            "mbd, t5, ace-step, demucs, whisper or wan",
        )
        p.add_argument("--name", help="snapshot name (default: tiny-ENGINE)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
        p.set_defaults(run=_build, kind=kind)


class _Bar:
    """A bytes progress bar on stderr, created on first use and safe to update from threads."""

    def __init__(self, desc: str):
        self.desc, self.bar, self.lock = desc, None, threading.Lock()

    def __call__(self, n: int, total: int) -> None:
        with self.lock:
            if self.bar is None:
                self.bar = tqdm(
                    total=total, unit="B", unit_scale=True, desc=self.desc, leave=False, disable=None
                )
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fetch(args) -> int:
    wb = Workbench.open()
    if args.all == bool(args.name):
        raise RequestError(
            f"give a {args.kind} name or --all (not both), e.g. 'harmonia {plural(args.kind)} fetch --all'."
        )
    if not args.all:
        _fetch_one(wb, args, args.name)
        return 0
    from harmonia.errors import FetchError

    names = [s.name for s in wb.specs(args.kind).values() if s.repo]
    failed = []
    for name in names:  # one refused snapshot does not stop the others
        try:
            _fetch_one(wb, args, name)
        except FetchError as exc:
            print(f"error: {args.kind} {name}: {printable(exc)}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(
            f"error: {len(failed)} of {len(names)} {plural(args.kind)} not fetched: {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return 0


def _fetch_one(wb: Workbench, args, name: str) -> None:
    from harmonia.hub import fetch

    bar = _Bar("checking")
    try:
        result = fetch(
            wb, args.kind, name, revision=args.revision, allow_pickle=args.allow_pickle, progress=bar
        )
    finally:
        bar.close()
    inv, src = result.inventory, result.inventory.source
    for note in result.notes:
        print(note)
    verb = "already present" if result.reused else "fetched"
    pickles = ""
    if result.pickles:
        why = (
            "--allow-pickle"
            if result.pickle_consent == "--allow-pickle"
            else "params.yaml's allow_pickle: true"
        )
        pickles = f"; pickled weights taken ({why}): {', '.join(result.pickles)}"
    print(
        f"{verb}: {args.kind} {result.name} = {src.repo}@{src.revision} "
        f"({len(inv.files)} files, {_size(inv.total_size)}) in {_rel(wb, result.path)}{pickles}"
    )
    if not result.reused:
        _after_snapshot_change(wb, args.kind)


def _verify(args) -> int:
    from harmonia.snapshots import list_snapshots, verify

    wb = Workbench.open()
    names = args.names or [s.name for s in list_snapshots(wb, args.kind) if s.present]
    reports = []
    for name in names:
        wb.snapshot_dir(args.kind, name)  # rejects names that are not plain folder names
        bar = _Bar(f"verifying {name}")
        try:
            reports.append(verify(wb, args.kind, name, full=args.full, progress=bar))
        finally:
            bar.close()
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        for report in reports:
            print(report.summary())
            for p in report.problems:
                print(f"  {p.kind:9} {p.path}: {p.detail}")
        if not reports:
            print(f"no {plural(args.kind)} present in {_rel(wb, wb.kind_dir(args.kind))}")
    return 0 if all(r.ok for r in reports) else EXIT_FAILED


def _list(args) -> int:
    from harmonia.snapshots import list_snapshots

    wb = Workbench.open()
    rows = list_snapshots(wb, args.kind)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    table = [("NAME", "SOURCE", "REVISION", "SIZE", "LICENSE", "VERIFIED")]
    for r in rows:
        verified = r.verified + (f" {r.verified_at}" if r.verified_at else "")
        revision = (r.revision or "-")[:12]
        size = _size(r.size) if r.size is not None else "-"
        table.append((r.name, r.source, revision, size, r.license or "-", verified))
    _print_table(table)
    return 0


class _Steps:
    """A decoding-steps progress bar on stderr."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", desc=self.desc, leave=False, disable=None)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _generate(args) -> int:
    """`harmonia generate KIND ...`: params.yaml's defaults for the kind, then the flags."""
    from harmonia.defaults import kind_defaults
    from harmonia.engines import request_type
    from harmonia.generation import generate
    from harmonia.prompts import Idea
    from harmonia.requests import options

    wb = Workbench.open()
    defaults = kind_defaults(wb, args.kind)
    model = args.model or defaults.model
    if not model:
        raise RequestError(
            f"no model given: pass --model NAME or set {KINDS[args.kind].section}.model in params.yaml."
        )
    kind_type = request_type(args.kind)
    flags = {name: getattr(args, name) for name, _ in options(kind_type)}
    structured = getattr(
        kind_type, "JSON_INPUTS", ()
    )  # a shot list: a file or an artifact, read as JSON later
    for name in getattr(kind_type, "TEXT_INPUTS", ()):  # a text flag (--lyrics): a file, an artifact, or text
        if name not in structured and isinstance(flags.get(name), str):
            flags[name] = _text_or_file(flags[name], name)
    from_text = getattr(args, "from_text", None)
    if flags.get("shots") is not None:  # a music video: the prompts are its shots' (the engine checks)
        flags["shots"] = _file_or_artifact(flags["shots"])
        prompts = tuple(args.prompts) if args.prompts or from_text else ()
    if flags.get("shots") is None or args.prompts or from_text:
        prompts = _prompts_or_text(args.prompts, from_text)
    request = defaults.request_for(prompts, seed=args.seed, **flags)
    ideas = None
    idea_key = None if "key" in flags else args.key
    if not isinstance(prompts, tuple) and any(
        (args.genre, args.mood, args.tempo_bpm, idea_key, args.instruments)
    ):
        raise RequestError(
            "--genre, --mood, --tempo, --key and --instrument shape typed prompts, not --from-text."
        )
    if any((args.genre, args.mood, args.tempo_bpm, idea_key, args.instruments)):
        ideas = [
            Idea(p, genre=args.genre, mood=args.mood, tempo_bpm=args.tempo_bpm, key=idea_key,
                 instruments=tuple(args.instruments))
            for p in args.prompts
        ]  # fmt: skip
    settings = defaults.run_settings()
    given = {"fmt": args.fmt, "normalize_lufs": args.normalize_lufs, "device": args.device, "dtype": args.dtype,
             "threads": args.threads, "precision": args.precision}  # fmt: skip
    settings.update({k: v for k, v in given.items() if v is not None})
    bar = _Steps("generating")
    try:
        done = generate(
            wb, model, request, ideas=ideas, force=args.force, progress=bar, notice=_notice, **settings
        )
    finally:
        bar.close()
    _print_generated(wb, done)
    return 0


def _text_or_file(value: str, name: str):
    """A text flag's value: a file's text (FILE), a text artifact (ID or ID/FILE), or the text itself."""
    import re

    from harmonia.generation import From

    try:
        is_file = "\n" not in value and Path(value).is_file()
    except OSError:  # a name too long for a file: text
        is_file = False
    if is_file:
        path = Path(value)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RequestError(f"--{name}: cannot read {value} as UTF-8 text ({exc}).") from None
    if re.fullmatch(r"[0-9a-f]{8,16}(/[\w.\-/]+)?", value):
        artifact, _, file = value.partition("/")
        return From(artifact, file or None)
    if re.fullmatch(
        r"\S+\.(txt|lrc|md|text)", value, flags=re.IGNORECASE
    ):  # a file's name, not words to sing
        raise RequestError(
            f"--{name}: there is no file {value}; give an existing file, an artifact id, or the text itself."
        )
    return value


def _notice(line: str) -> None:
    """An engine's word before it starts (the video engine's time estimate), on stderr."""
    print(line, file=sys.stderr, flush=True)


def _file_or_artifact(value: str):
    """A path that exists stays a path; otherwise ID or ID/FILE names an artifact."""
    import re
    from pathlib import Path

    from harmonia.generation import From

    if Path(value).exists() or not re.fullmatch(r"[0-9a-f]{4,16}(/[\w.\-/]+)?", value):
        return value
    artifact, _, file = value.partition("/")
    return From(artifact, file or None)


def _prompts_or_text(words: Sequence[str], from_text: str | None):
    """The typed prompts, or the text artifact named by --from-text (ID or ID/FILE), not both."""
    from harmonia.generation import From

    if from_text is None:
        if not words:
            raise RequestError("give a PROMPT, or --from-text ID to take it from a text artifact.")
        return tuple(words)
    if words:
        raise RequestError("give a PROMPT or --from-text ID, not both.")
    artifact, _, file = from_text.partition("/")
    return From(artifact, file or None)


def _write(args) -> int:
    """`harmonia write TASK IDEA...`: a language model writes; print the text and the artifact id."""
    from harmonia.defaults import kind_defaults
    from harmonia.generation import generate
    from harmonia.requests import TextRequest, options

    wb = Workbench.open()
    defaults = kind_defaults(wb, "text")
    model = args.model or defaults.model
    if not model:
        raise RequestError("no model given: pass --model NAME or set text.model in params.yaml.")
    flags = {name: getattr(args, name) for name, _ in options(TextRequest) if name != "task"}
    idea = _prompts_or_text(args.idea, args.from_text)
    request = defaults.request_for(idea, seed=args.seed, task=args.task, **flags)
    settings = defaults.run_settings()
    settings.update(
        {k: v for k, v in {"device": args.device, "threads": args.threads}.items() if v is not None}
    )
    bar = _Steps("writing")
    try:
        done = generate(wb, model, request, force=args.force, progress=bar, **settings)
    finally:
        bar.close()
    art, m = done.artifact, done.artifact.manifest
    out = m.outputs[0]
    for line in art.file(out).read_text(encoding="utf-8").rstrip("\n").split("\n"):
        print(printable(line))  # model-written text is escaped like any user text
    if done.cached:
        print(f"cached: artifact {art.id} (the identical request was made before; --force asks again)")
    else:
        tokens = m.engine.details.get("new_tokens")
        print(
            f"written: artifact {art.id} ({args.task}, {art.model}, seed {art.seed}, "
            f"{tokens if tokens is not None else '?'} tokens, {m.timings.generate_s:.1f} s) "
            f"{_rel(wb, art.path / out.path).rstrip('/')}"
        )
    if m.engine.details.get("reproducible") is False:
        print(f"  not reproducible: {m.engine.details.get('why_not_reproducible')}")
    return 0


def _add_write_command(commands) -> None:
    from harmonia.requests import TEXT_TASKS, TextRequest, limits, options

    group = commands.add_parser(
        "write", help="a language model writes a prompt, lyrics, a shot list or sfx prompts"
    )
    sub = group.add_subparsers(title="tasks", metavar="TASK", required=True)
    helps = {
        "prompt": "an idea to one music prompt",
        "lyrics": "an idea to lyrics with section tags ([verse], [chorus], ...) that fit --duration",
        "shots": "an idea and a track (--track or --duration, --sections) to a JSON shot list",
        "sfx": "a scene to a JSON list of --count sample prompts",
    }
    bounds = limits(TextRequest)
    for task in TEXT_TASKS:
        p = sub.add_parser(task, help=helps[task])
        p.add_argument("idea", nargs="*", metavar="IDEA", help="what to write about (words are joined)")
        p.add_argument(
            "--from-text", metavar="ID[/FILE]", help="take the idea from a text artifact (a parent)"
        )
        p.add_argument("--model", help="a text model from params.yaml (default: text.model there)")
        p.add_argument("--seed", type=int, help="random seed (default: drawn and recorded)")
        for name, meta in options(TextRequest):
            if name == "task":
                continue
            bound = bounds.get(name)
            kind = (int if bound.integer else float) if bound else str
            extra = f" [{bound.low:g}, {bound.high:g}] {bound.unit}".rstrip() if bound else ""
            p.add_argument(meta["flag"], dest=name, type=kind, metavar=meta.get("metavar"),
                           help=f"{meta.get('help') or name.replace('_', ' ')}{extra} (default: text.{name})")  # fmt: skip
        p.add_argument("--force", action="store_true", help="ask again even if the identical artifact exists")
        p.add_argument("--device", help="auto (default), cpu, cuda, mps")
        p.add_argument(
            "--threads", type=int, help="CPU threads (default: all cores); recorded, they change the bits"
        )
        p.set_defaults(run=_write, task=task)


def _add_batch_command(commands) -> None:
    p = commands.add_parser(
        "batch", help="run a file of requests (rows, or prompts x seeds x models) on a pool or a Ray cluster"
    )
    p.add_argument("file", metavar="FILE.yaml", help="the batch: a list of rows, or rows/product/defaults")
    p.add_argument(
        "--executor", choices=["local", "ray"], help="local: a process pool here; ray: a Ray cluster "
        "(RAY_ADDRESS, or one started for the run) (default: batch.executor, else local)",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, help="pool processes or Ray actors (default: batch.workers, else 2)"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads per row when a row sets none (default: batch.threads, "
        "else 1); part of the artifact id",
    )  # fmt: skip
    p.add_argument("--report", metavar="FILE.json", help="also write every row's result as JSON")
    p.set_defaults(run=_batch)


def _batch(args) -> int:
    """`harmonia batch FILE.yaml`: check every row, run them, print failures and a summary table."""
    from pathlib import Path

    from harmonia.batch import executor_config, load_batch, run_batch

    wb = Workbench.open()
    if args.report:  # checked now, not after every row has run
        target = Path(args.report)
        if target.is_dir() or not target.parent.is_dir():
            why = "is a folder" if target.is_dir() else f"the folder {target.parent} does not exist"
            raise RequestError(f"--report {args.report}: {why}; give a file path in an existing folder.")
    config = executor_config(wb, executor=args.executor, workers=args.workers, threads=args.threads)
    rows = load_batch(wb, args.file, threads=config.threads)  # every row checked before anything runs
    print(
        f"batch: {len(rows)} rows from {args.file} on {config.executor} ({config.workers} workers)",
        flush=True,
    )
    bar = tqdm(total=len(rows), unit="row", desc="batch", disable=None)
    failed = 0

    def on_row(result) -> None:
        nonlocal failed
        failed += result.error is not None
        bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    try:
        report = run_batch(wb, rows, config, on_row=on_row)
    finally:
        bar.close()
    for note in report.notes:
        print(f"  {note}")
    for r in report.failed:
        print(f"failed: {r.where}: {printable(r.error)}")
    _print_table(report.table())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        print(f"report: {args.report}")
    return EXIT_FAILED if report.failed else 0


def _print_generated(wb: Workbench, done) -> None:
    art, m = done.artifact, done.artifact.manifest
    if done.cached:
        print(f"cached: artifact {art.id} (the identical request was made before; --force regenerates)")
    else:
        t = m.timings
        length = f" of {art.outputs[0].duration_s:g} s" if art.outputs and art.outputs[0].duration_s else ""
        rtf = f", real-time factor {t.real_time_factor:.2f}" if t.real_time_factor is not None else ""
        print(
            f"generated: artifact {art.id} ({art.model}, seed {art.seed}, {len(art.outputs)} take(s)"
            f"{length}, {t.generate_s:.1f} s{rtf})"
        )
    for out in m.outputs:
        print(f'  {_rel(wb, art.path / out.path).rstrip("/")}  "{printable(out.prompt or "")}"')
        if out.preview:
            print(f"  {_rel(wb, art.path / out.preview).rstrip('/')}")
    print(f"  {_rel(wb, art.path / 'manifest.json').rstrip('/')}")
    if m.non_commercial or m.licence_unknown:
        print(f"  licence: {_licence_line(m)}")


def _artifacts_list(args) -> int:
    from harmonia.artifacts import list_artifacts

    wb = Workbench.open()
    arts = list_artifacts(wb)
    if args.json:
        rows = [
            {"id": a.id, "created": a.created, "kind": a.kind, "model": a.model, "seed": a.seed,
             "path": str(a.path), "outputs": [o.path for o in a.outputs],
             "prompts": [o.prompt for o in a.outputs], "duration_s": a.outputs[0].duration_s if a.outputs else None,
             "parents": [p.id for p in a.manifest.parents], "non_commercial": a.manifest.non_commercial}
            for a in arts
        ]  # fmt: skip
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not arts:
        print(f"no artifacts in {_rel(wb, wb.artifacts_dir)}")
        return 0
    table = [("ID", "CREATED", "KIND", "MODEL", "SEED", "TAKES", "SECONDS", "PROMPT")]
    for a in arts:
        prompt = printable(a.outputs[0].prompt or "" if a.outputs else "")
        prompt = prompt if len(prompt) <= 48 else prompt[:47] + "…"
        dur = f"{a.outputs[0].duration_s:g}" if a.outputs and a.outputs[0].duration_s is not None else "-"
        kind = a.kind + (" (NC)" if a.manifest.non_commercial else "")
        table.append((a.id, a.created, kind, a.model, str(a.seed), str(len(a.outputs)), dur, prompt))
    _print_table(table)
    if any(a.manifest.non_commercial for a in arts):
        print("(NC): made with a non-commercial model; see 'harmonia artifacts show ID'")
    return 0


def _licence_line(m) -> str:
    """Every licence behind an artifact, and plainly whether it allows commercial use."""
    parts = []
    for lic in m.licenses:
        via = f" via {lic.via}" if lic.via else ""
        parts.append(f"{lic.license or 'not recorded'} ({lic.model}{via})")
    if m.non_commercial:
        verdict = "NON-COMMERCIAL USE ONLY"
    elif m.licence_unknown:
        verdict = (
            f"licence of {', '.join(m.licence_unknown)} not recorded: check it before any commercial use"
        )
    else:
        verdict = "no non-commercial licence found"
    return f"{'; '.join(parts)}: {verdict}"


def _artifacts_show(args) -> int:
    from harmonia.artifacts import children, load_artifact

    wb = Workbench.open()
    art = load_artifact(wb, args.artifact)
    m = art.manifest
    if args.json:
        print(json.dumps(m.to_json(), indent=2, ensure_ascii=False))
        return 0
    model, rt, t = m.model, m.runtime, m.timings
    revision = model.revision or (
        f"synthetic seed {model.seed}" if model.source == "synthetic" else model.source
    )
    print(f"artifact {art.id}  ({m.kind}, created {art.created}, schema {m.schema})")
    print(f"  path      {_rel(wb, art.path)}")
    if model.source == "none":  # an engine without weights (the slicer)
        print(f"  model     none ({model.name} runs no model)")
    else:
        print(
            f"  model     {model.name} ({model.repo or model.builder} @ {revision}, inventory {model.inventory_digest[:12]})"
        )
    print(f"  engine    {m.engine.name} (code version {m.engine.code_version})")
    settings = ", ".join(
        f"{k} {printable(json.dumps(v, ensure_ascii=False))}"
        for k, v in m.request.items()
        if k not in ("prompts",) and v is not None
    )
    print(f"  request   {settings}")
    paths = "".join(f"; {name} {path}" for name, path in sorted(rt.paths.items()))  # the products it ran
    print(
        f"  runtime   {rt.device} {rt.dtype} ({rt.precision}{paths}), {rt.threads} threads, "
        f"torch {m.packages.get('torch')}, transformers {m.packages.get('transformers')}"
    )
    rtf = f", real-time factor {t.real_time_factor:.2f}" if t.real_time_factor is not None else ""
    print(f"  timings   load {t.load_s:.2f} s, generate {t.generate_s:.2f} s{rtf}")
    print(f"  licence   {_licence_line(m)}")
    for out in m.outputs:
        if out.media == "audio":
            loud = f"{out.loudness_lufs:.1f} LUFS" if out.loudness_lufs is not None else "loudness n/a"
            what = (
                f"{out.duration_s:g} s, {out.sample_rate} Hz, {out.channels} ch, peak {out.peak:.3f}, {loud}"
            )
        else:
            what = f"{out.media}, {out.characters} characters" if out.media == "text" else out.media
        print(f'  output    {out.path}  {what}, sha256 {out.sha256[:12]}  "{printable(out.prompt or "")}"')
    for p in m.parents:
        print(f"  parent    {p.id} ({p.kind}, {p.role}: {p.file}, sha256 {p.sha256[:12]})")
    for child in children(wb, art.id):
        roles = ", ".join(p.role for p in child.manifest.parents if p.id == art.id)
        print(f"  child     {child.id} ({child.kind}, as {roles})")
    return 0


def _samples_slice(args) -> int:
    """`harmonia samples slice ARTIFACT`: the slicer through the one artifact path (derive)."""
    from harmonia.generation import derive
    from harmonia.requests import SLICE_TYPES, SliceRequest

    wb = Workbench.open()
    types = SLICE_TYPES if args.types == "both" else (args.types,)
    request = SliceRequest(
        source=args.source, types=types, bpm=args.bpm, loop_bars=args.loop_bars, zip=args.zip
    )
    done = derive(wb, "slicer", request, force=args.force)
    art, m = done.artifact, done.artifact.manifest
    facts = m.engine.details
    if done.cached:
        print(f"cached: pack {art.id} (the identical slice was made before; --force slices again)")
    else:
        tempo = f", {facts['tempo_bpm']:.1f} bpm" if facts.get("tempo_bpm") else ", no steady tempo"
        print(
            f"sliced: pack {art.id} ({facts['one_shots']} one-shots, {facts['loops']} loops{tempo}, "
            f"key {facts.get('key')})"
        )
    for parent in m.parents:
        print(f"  from      {parent.id}/{parent.file} ({parent.kind})")
    print(f"  folder    {_rel(wb, art.path).rstrip('/')}")
    for out in m.outputs:
        if not out.path.endswith(".wav"):
            print(f"  {out.path}")
    if m.non_commercial:
        print(f"  licence: {_licence_line(m)}")
    return 0


def _edit(args) -> int:
    """`harmonia edit repaint|extend|cover ID ...`: a child artifact of the song, through generate()."""
    from harmonia.songs import edit

    wb = Workbench.open()
    fields = {
        name: getattr(args, name, None)
        for name in ("start_s", "end_s", "extend_s", "before", "strength", "reference", "seed", "steps")
    }
    if args.style is not None:
        fields["prompts"] = (args.style,)
    if args.lyrics is not None:
        fields["lyrics"] = _text_or_file(args.lyrics, "lyrics")
    bar = _Steps(args.edit)
    try:
        done = edit(
            wb,
            args.edit,
            args.song,
            model=args.model,
            force=args.force,
            progress=bar,
            threads=args.threads,
            **fields,
        )
    finally:
        bar.close()
    _print_generated(wb, done)
    m = done.artifact.manifest
    for parent in m.parents:
        print(f"  from      {parent.id}/{parent.file} ({parent.kind}, as {parent.role})")
    for take in m.engine.details.get("takes", []):
        if "outside_max_abs_diff" in take:
            start, end = take["range_samples"]
            rate = m.outputs[0].sample_rate or 1
            print(
                f"  kept      every sample outside {start / rate:.2f}-{end / rate:.2f} s (max abs difference "
                f"{take['outside_max_abs_diff']:g}; the model alone: {take['model_outside_max_abs_diff']:.3g})"
            )
    return 0


def _stems(args) -> int:
    """`harmonia stems ID`: demucs through the one artifact path; the stems' parent is the source."""
    from harmonia.songs import stems

    wb = Workbench.open()
    bar = _Steps("separating")
    try:
        done = stems(wb, args.source, model=args.model, force=args.force, progress=bar, threads=args.threads)
    finally:
        bar.close()
    art, m = done.artifact, done.artifact.manifest
    facts = m.engine.details
    snr = "exact" if facts.get("sum_snr_db") is None else f"SNR {facts['sum_snr_db']:.1f} dB"
    if done.cached:
        print(f"cached: stems {art.id} (the identical split was made before; --force splits again)")
    else:
        print(
            f"separated: stems {art.id} ({art.model}, {m.timings.generate_s:.1f} s); the stems add up to the "
            f"source within {facts['sum_max_abs_diff']:.3g} ({snr})"
        )
    for parent in m.parents:
        print(f"  from      {parent.id}/{parent.file} ({parent.kind})")
    for out in m.outputs:
        print(f"  {_rel(wb, art.path / out.path).rstrip('/')}")
    return 0


def _transcribe(args) -> int:
    """`harmonia transcribe ID`: whisper through the one artifact path; WER/CER against the lyrics."""
    from harmonia.songs import transcribe

    wb = Workbench.open()
    lyrics = None if args.lyrics is None else _text_or_file(args.lyrics, "lyrics")
    if lyrics is not None and not isinstance(lyrics, str):
        raise RequestError("--lyrics takes text or a file here, not an artifact id.")
    bar = _Steps("transcribing")
    try:
        done = transcribe(
            wb,
            args.source,
            lyrics=lyrics,
            language=args.language,
            model=args.model,
            force=args.force,
            progress=bar,
            threads=args.threads,
        )
    finally:
        bar.close()
    art, m = done.artifact, done.artifact.manifest
    details = m.engine.details
    print(f"{'cached' if done.cached else 'transcribed'}: transcript {art.id} ({art.model})")
    print(f'  text      "{printable(details["transcript"])}"')
    scores = details.get("intelligibility")
    if scores is None:
        print("  no lyrics to compare with (give --lyrics)")
    elif scores["wer"] is None:
        print("  the lyrics have no words (an instrumental): no error rates")
    else:
        print(f"  WER       {scores['wer']:.3f}  (words against the lyrics, normalised)")
        print(f"  CER       {scores['cer']:.3f}  (characters)")
    for parent in m.parents:
        print(f"  from      {parent.id}/{parent.file} ({parent.kind})")
    return 0


def _reproduce(args) -> int:
    from harmonia.artifacts import check_id

    wb = Workbench.open()
    check_id(args.artifact)  # a bad id is refused before torch and the engines are imported

    from harmonia.generation import reproduce

    bar = _Steps("reproducing")
    try:
        verdict = reproduce(wb, args.artifact, progress=bar)
    finally:
        bar.close()
    print(verdict.summary())
    for o in verdict.outputs:
        if not o.identical:
            print(f"  {o.path}: max abs difference {o.max_abs_diff:.3g}, SNR {o.snr_db:.1f} dB")
    for d in verdict.differences:
        print(f"  differs: {d}")
    return 0 if verdict.verified else EXIT_FAILED


def _doctor(args) -> int:
    import shutil

    import torch
    from huggingface_hub import constants

    from harmonia.generation import package_versions
    from harmonia.hub import token_source
    from harmonia.snapshots import list_snapshots

    wb = Workbench.open()
    versions = package_versions()
    print(f"workbench   {wb.root}")
    print("packages    " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    print(f"device      cuda: {gpu}; mps: {'yes' if mps else 'no'}; cpu threads: {torch.get_num_threads()}")
    source = token_source(wb.root)
    print(
        f"hub token   {'configured (from ' + source + ')' if source else 'not configured (gated or private repos will fail)'}"
    )
    print(
        f"hub         {constants.ENDPOINT}{' (HF_HUB_OFFLINE=1: fetching is off)' if constants.HF_HUB_OFFLINE else ''}"
    )
    free = shutil.disk_usage(wb.root).free
    print(f"disk        {_size(free)} free at {wb.root}")
    for kind in SNAPSHOT_KINDS:
        for row in list_snapshots(wb, kind):
            state = row.verified + (f" {row.verified_at}" if row.verified_at else "")
            print(f"{kind:11} {row.name}: {row.source}, {state}")
    return 0


def _demo(args) -> int:
    from harmonia.demo import run_demo

    wb = Workbench.open()
    bar = _Steps("generating")
    try:
        done = run_demo(wb, progress=bar)
    finally:
        bar.close()
    _print_generated(wb, done)
    art = done.artifact  # the artifact holds the waveform/spectrogram picture of each take
    print(f"spectrogram: {_rel(wb, art.path / art.outputs[0].preview).rstrip('/')}")
    print(
        f"listen: {_rel(wb, art.file(art.outputs[0])).rstrip('/')}   details: harmonia artifacts show {art.id}"
    )
    return 0


def _notebooks_run(args) -> int:
    from pathlib import Path

    from harmonia.notebooks import run_notebooks

    wb = Workbench.open()
    out = Path(args.out) if Path(args.out).is_absolute() else wb.root / args.out
    runs = run_notebooks(
        wb, out, names=args.names or None, tiny=args.tiny, timeout_s=args.timeout, kernel=args.kernel
    )
    for run in runs:
        print(
            f"ok: {_rel(wb, run.source).rstrip('/')} in {run.seconds:.1f} s -> {_rel(wb, run.output).rstrip('/')}"
        )
    return 0


def _check(args) -> int:
    from harmonia.tracking import check

    problems = check(Workbench.open())
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("ok: params.yaml pins every hub snapshot; snapshots.lock and the .dvc files agree")
    return EXIT_FAILED if problems else 0


def _lock(args) -> int:
    from harmonia.tracking import write_record

    path = write_record(Workbench.open())
    print(f"wrote {path.name}")
    return 0


def _after_snapshot_change(wb: Workbench, kind: str) -> None:
    from harmonia.tracking import sync

    for line in sync(wb, kind):
        print(line)


def _stage_verify(args) -> int:
    from pathlib import Path

    from harmonia.pipeline import stage_verify

    result = stage_verify(Workbench.open(), Path(args.out))
    print(f"verify: {len(result['snapshots'])} snapshots ok -> {args.out}")
    return 0


def _stage_generate(args) -> int:
    from pathlib import Path

    from harmonia.pipeline import stage_generate

    bar = _Steps(f"generate {args.prompt_set} with {args.model}")
    try:
        index = stage_generate(Workbench.open(), args.prompt_set, args.model, Path(args.out), progress=bar)
    finally:
        bar.close()
    artifacts = sorted({t["artifact"] for t in index["takes"]})
    print(f"generate: {len(index['takes'])} takes in {len(artifacts)} artifacts -> {args.out}")
    return 0


def _stage_video(args) -> int:
    from pathlib import Path

    from harmonia.pipeline import stage_video

    wb = Workbench.open()
    bar = _Steps(f"video {args.model}")
    try:
        index = stage_video(
            wb, args.model, Path(args.soundtrack), Path(args.out), progress=bar, notice=_notice
        )
    finally:
        bar.close()
    for v in index["videos"]:
        print(
            f"{args.out}/{v['file']}  ({v['duration_s']:g} s, {len(v['shots'])} shots, artifact {v['artifact']})"
        )
    return 0


def _stage_samples(args) -> int:
    from pathlib import Path

    from harmonia.pipeline import stage_samples

    bar = _Steps(f"samples with {args.model}")
    try:
        index = stage_samples(Workbench.open(), args.model, Path(args.out), progress=bar)
    finally:
        bar.close()
    print(f"samples: {len(index['takes'])} takes from {len(index['artifacts'])} artifacts -> {args.out}")
    return 0


def _stage_songs(args) -> int:
    from harmonia.pipeline import stage_songs

    wb = Workbench.open()
    index = stage_songs(wb, args.model, _path(wb, args.out), progress=_Steps("songs"))
    print(f"songs: {len(index['takes'])} take(s) with {args.model} in {args.out}")
    return 0


def _stage_stems(args) -> int:
    from harmonia.pipeline import stage_stems

    wb = Workbench.open()
    index = stage_stems(wb, _path(wb, args.songs), _path(wb, args.out), progress=_Steps("stems"))
    print(f"stems: {len(index['takes'])} song(s) split into {args.out}")
    return 0


def _stage_transcribe(args) -> int:
    from harmonia.pipeline import stage_transcribe

    wb = Workbench.open()
    index = stage_transcribe(wb, _path(wb, args.stems), _path(wb, args.out), progress=_Steps("transcribing"))
    print(f"transcribe: {len(index['takes'])} vocal stem(s) transcribed into {args.out}")
    return 0


def _stage_evaluate_songs(args) -> int:
    from harmonia.pipeline import stage_evaluate_songs

    wb = Workbench.open()
    metrics = stage_evaluate_songs(
        wb, _path(wb, args.transcripts), _path(wb, args.songs), _path(wb, args.metrics), _path(wb, args.plots)
    )
    wer = metrics.get("mean_wer")
    print(f"evaluate-songs: {metrics['takes']} song(s), mean WER {'n/a' if wer is None else f'{wer:.3f}'}")
    return 0


def _path(wb: Workbench, value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else wb.root / value


def _stage_evaluate(args) -> int:
    from pathlib import Path

    from harmonia.pipeline import stage_evaluate

    metrics = stage_evaluate(Workbench.open(), Path(args.generated), Path(args.metrics), Path(args.plots))
    print(f"evaluate: {metrics['takes']} takes -> {args.metrics}, {args.plots}")
    return 0


def _stage_report(args) -> int:
    from pathlib import Path

    from harmonia.pipeline import stage_report

    notebook, page = stage_report(Workbench.open(), Path(args.out))
    print(f"report: {notebook} and {page}")
    return 0


def _print_table(table) -> None:
    table = [[printable(cell) for cell in row] for row in table]  # names and prompts are user text
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _build(args) -> int:
    """`models tiny` and `datasets build`: a snapshot built in code, then recorded (and dvc-added)."""
    if args.kind == "model":
        from harmonia.tiny import build_tiny as build

        what = f"tiny {args.builder}"
    else:
        from harmonia.datasets import build_dataset as build

        what = args.builder
    wb = Workbench.open()
    built = build(wb, args.builder, name=args.name, seed=args.seed)
    inv = built.inventory
    print(
        f"built: {args.kind} {built.name} = {what}, seed {args.seed} "
        f"({len(inv.files)} files, {_size(inv.total_size)}, digest {inv.digest[:12]}) in {_rel(wb, built.path)}"
    )
    _after_snapshot_change(wb, args.kind)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _rel(wb: Workbench, path) -> str:
    try:
        return f"{path.relative_to(wb.root)}/"
    except ValueError:
        return str(path)


def main_exit() -> None:
    """Entry point of the ``harmonia`` console script."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `harmonia ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main_exit()
