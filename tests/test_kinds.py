"""One generation path for every kind: old artifacts, checks before the cache, lineage, licences,
threads, cancel, a fault inside the write, defaults from params.yaml, the declared dependencies."""

import ast
import hashlib
import json
import shutil
import threading
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from harmonia.artifacts import check_id, children, list_artifacts, load_artifact
from harmonia.defaults import kind_defaults
from harmonia.engines import ENGINES, KINDS, engine_class
from harmonia.errors import ArtifactError, BuilderError, Cancelled, ParamsError, RequestError
from harmonia.generation import From, generate, reproduce
from harmonia.manifest import LEGACY_SCHEMA, Manifest
from harmonia.requests import MusicRequest, limits
from harmonia.workbench import Workbench
from tests.conftest import REPO_ROOT, run_cli

LEGACY = REPO_ROOT / "tests" / "data" / "legacy-artifacts"
LEGACY_TEXT_ID, LEGACY_CONTINUATION_ID = "50466b14327371bf", "a469ec8b9f5fba93"
# they were made on a CPU whose torch kernels ran AVX-512 (schema 1 did not record it): on a CPU
# with other vector units torch's own arithmetic rounds differently, so they replay to rounding
LEGACY_TORCH_CPU = "AVX512"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- artifacts made before this schema ----------------------------------------------------------
def test_schema_1_artifacts_are_cache_hits_and_reproduce_identical(music_wb):
    """Made by Harmonia at a1514a3 (tests/data/legacy-artifacts): same ids, same bytes where torch's
    kernels run the vector code they ran then (AVX-512; measured: identical on an AMD EPYC and an
    Intel Xeon with it), and the same to rounding elsewhere (an AMD EPYC with AVX2 only: 131.6 dB)."""
    import torch

    same_kernels = torch.backends.cpu.get_cpu_capability() == LEGACY_TORCH_CPU
    shutil.copytree(LEGACY, music_wb.artifacts_dir)
    done = generate(
        music_wb, "tiny-musicgen", MusicRequest("legacy calm piano", duration_s=1.0, seed=11), threads=2
    )
    assert done.cached and done.artifact.id == LEGACY_TEXT_ID
    assert done.artifact.manifest.schema == LEGACY_SCHEMA and done.artifact.kind == "music"
    cont = load_artifact(music_wb, LEGACY_CONTINUATION_ID)
    again = generate(
        music_wb,
        "tiny-musicgen",
        MusicRequest("legacy continuation", duration_s=1.0, seed=12, continuation=str(cont.file("inputs/continuation.wav"))),
        threads=2,
        fmt="flac",
        normalize_lufs=-20.0,
    )  # fmt: skip
    assert again.cached and again.artifact.id == LEGACY_CONTINUATION_ID
    for art_id in (LEGACY_TEXT_ID, LEGACY_CONTINUATION_ID):
        verdict = reproduce(music_wb, art_id)
        assert verdict.identical or not same_kernels, verdict
        assert verdict.differences == () and all(o.snr_db > 120 for o in verdict.outputs), verdict
    # A new request gets a schema-2 id; the old ones are left as they are.
    fresh = generate(music_wb, "tiny-musicgen", MusicRequest("legacy calm piano", duration_s=1.0, seed=11), threads=2, force=True)  # fmt: skip
    assert fresh.artifact.id not in (LEGACY_TEXT_ID, LEGACY_CONTINUATION_ID)
    assert fresh.artifact.manifest.schema == "harmonia.manifest/2"
    same_bytes = sha(fresh.artifact.file("take-0.wav")) == sha(LEGACY / LEGACY_TEXT_ID / "take-0.wav")
    assert same_bytes or not same_kernels
    shown = run_cli("artifacts", "show", LEGACY_CONTINUATION_ID, cwd=music_wb.root)
    assert shown.returncode == 0, shown.stderr
    assert "schema harmonia.manifest/1" in shown.stdout
    assert (
        "  licence   not recorded (tiny-musicgen): licence of tiny-musicgen not recorded: "
        "check it before any commercial use\n" in shown.stdout
    )


# -- the whole request is checked before the cache ----------------------------------------------
def test_a_malformed_value_never_hits_an_existing_artifact(music_wb):
    generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=1), previews=False)
    with pytest.raises(
        RequestError, match=r"^top_k must be an integer in \[0, 65536\] \(0 turns it off\), got '250'\.$"
    ):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=1, top_k="250"))
    with pytest.raises(RequestError, match=r"^duration_s must be > 0 and <= 300 seconds, got '0.5'\.$"):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s="0.5", seed=1))
    with pytest.raises(RequestError, match=r"^extend_stride_s must be > 0 and < 5.04 seconds, got 9\.$"):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=1, extend_stride_s=9))
    assert len(list_artifacts(music_wb)) == 1


def test_a_request_of_another_kind_is_refused(music_wb):
    with pytest.raises(RequestError, match=r"takes a MusicRequest, not a dict"):
        generate(music_wb, "tiny-musicgen", {"prompts": ["x"]})


def test_engines_declare_the_contract():
    for name in ENGINES:
        cls = engine_class(name)
        assert cls.name == name and cls.kind in KINDS and cls.code_version >= 1
        assert cls.packages and all(isinstance(p, str) for p in cls.packages)
        assert callable(cls.check) and callable(cls.load) and callable(cls.check_runtime)
        assert cls.request_type.INPUTS is not None
    with pytest.raises(
        RequestError,
        match=r"^engine 'nope' is not one Harmonia runs; known engines: musicgen, text, stable-audio, slicer, audiogen, magnet, ace-step, demucs, whisper, wan\.",
    ):
        engine_class("nope")


def test_a_model_without_an_engine_is_refused(workbench):
    (workbench.root / "params.yaml").write_text("models:\n  m: {builder: musicgen, seed: 0}\n")
    wb = Workbench.open(workbench.root)
    with pytest.raises(
        RequestError, match=r"^Model 'm' has no 'engine' in params.yaml; set it \(e.g. engine: musicgen\)"
    ):
        generate(wb, "m", MusicRequest("x", seed=1))


# -- lineage ------------------------------------------------------------------------------------
def test_an_artifact_as_input_becomes_a_parent(music_wb):
    source = generate(
        music_wb, "tiny-musicgen", MusicRequest("first", duration_s=1.0, seed=1), previews=False
    ).artifact
    child = generate(
        music_wb, "tiny-musicgen", MusicRequest("more", duration_s=2.0, seed=2, continuation=From(source.id[:8])),
        previews=False,
    ).artifact  # fmt: skip
    (parent,) = child.manifest.parents
    assert (parent.id, parent.file, parent.role, parent.kind) == (
        source.id,
        "take-0.wav",
        "continuation",
        "music",
    )
    assert parent.sha256 == source.outputs[0].sha256 == child.manifest.inputs["continuation"].sha256
    assert child.manifest.inputs["continuation"].parent == source.id
    assert [c.id for c in children(music_wb, source.id)] == [child.id]
    # The same input named by id on the CLI (ID/file) is the same artifact: a cache hit.
    again = run_cli(
        "generate", "music", "more", "--duration", "2", "--seed", "2", "--continue", f"{source.id}/take-0.wav",
        cwd=music_wb.root,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"cached: artifact {child.id} ")
    shown = run_cli("artifacts", "show", source.id, cwd=music_wb.root).stdout
    assert f"  child     {child.id} (music, as continuation)\n" in shown
    shown = run_cli("artifacts", "show", child.id, cwd=music_wb.root).stdout
    assert (
        f"  parent    {source.id} (music, continuation: take-0.wav, sha256 {parent.sha256[:12]})\n" in shown
    )

    # reproduce says when a parent is gone or changed (the kept copy still makes it identical)
    shutil.rmtree(source.path)
    verdict = reproduce(music_wb, child.id)
    assert verdict.identical
    assert verdict.differences == (
        f"parent {source.id} (continuation) is missing; the kept copy of its file was used",
    )


def test_a_changed_parent_is_refused_as_input_and_reported_by_reproduce(music_wb):
    source = generate(
        music_wb, "tiny-musicgen", MusicRequest("first", duration_s=1.0, seed=1), previews=False
    ).artifact
    child = generate(
        music_wb, "tiny-musicgen", MusicRequest("more", duration_s=2.0, seed=2, continuation=From(source.id)),
        previews=False,
    ).artifact  # fmt: skip
    take = source.file("take-0.wav")
    data = bytearray(take.read_bytes())
    data[-4:] = b"\0\0\0\0"
    take.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"^continuation: {source.id}/take-0.wav no longer matches"):
        generate(
            music_wb,
            "tiny-musicgen",
            MusicRequest("other", duration_s=2.0, seed=3, continuation=From(source.id)),
        )
    assert reproduce(music_wb, child.id).differences == (
        f"parent {source.id} (continuation) has changed since; the kept copy was used",
    )


def test_an_input_artifact_without_audio_or_with_a_bad_id(music_wb):
    with pytest.raises(
        ArtifactError, match=r"^'\.\./\.\./x' is not an artifact id: ids are 4 to 16 hex digits"
    ):
        generate(
            music_wb, "tiny-musicgen", MusicRequest("x", duration_s=1.0, seed=1, continuation=From("../../x"))
        )
    with pytest.raises(ArtifactError, match=r"^No artifact 'abcd1234' in "):
        generate(
            music_wb, "tiny-musicgen", MusicRequest("x", duration_s=1.0, seed=1, continuation="abcd1234")
        )
    assert not music_wb.artifacts_dir.exists() or not list_artifacts(music_wb)


@pytest.mark.parametrize("bad", ["/tmp/x", "../../x", "[a-f]*", "****", "/etc", "ABCDEF12", "abc"])
def test_ids_are_ids(music_wb, bad):
    with pytest.raises(ArtifactError, match=r"is not an artifact id"):
        check_id(bad)
    proc = run_cli("reproduce", bad, cwd=music_wb.root)
    assert (
        proc.returncode == 2 and proc.stderr.startswith("error: ") and "is not an artifact id" in proc.stderr
    )


def test_a_manifest_path_leaving_the_folder_is_refused(music_wb):
    art = generate(
        music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=1), previews=False
    ).artifact
    path = art.path / "manifest.json"
    data = json.loads(path.read_text())
    data["outputs"][0]["path"] = "../../../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"leaves the artifact folder"):
        reproduce(music_wb, art.id)
    data["outputs"][0]["path"], data["request"]["colour"] = "take-0.wav", "red"
    path.write_text(json.dumps(data))
    with pytest.raises(RequestError, match=r"^request field 'colour' is not a music request field"):
        reproduce(music_wb, art.id)


# -- licences -----------------------------------------------------------------------------------
def test_non_commercial_licences_are_said_plainly_and_inherited(music_wb):
    params = music_wb.root / "params.yaml"
    params.write_text(params.read_text().replace("    license: mit\n", "    license: cc-by-nc-4.0\n", 1))
    wb = Workbench.open(music_wb.root)
    for folder in (wb.root / "models").iterdir():  # the inventory's licence is what counts
        inv = folder / "inventory.json"
        data = json.loads(inv.read_text())
        data["license"] = "cc-by-nc-4.0" if folder.name == "tiny-musicgen" else "mit"
        inv.write_text(json.dumps(data))
    nc = generate(wb, "tiny-musicgen", MusicRequest("x", duration_s=1.0, seed=1), previews=False).artifact
    assert nc.manifest.non_commercial and nc.manifest.model.license == "cc-by-nc-4.0"
    child = generate(
        wb, "tiny-musicgen-melody", MusicRequest("y", duration_s=2.0, seed=1, continuation=From(nc.id)), previews=False
    ).artifact  # fmt: skip
    assert [(x.model, x.license, x.via) for x in child.manifest.licenses] == [
        ("tiny-musicgen-melody", "mit", None),
        ("tiny-musicgen", "cc-by-nc-4.0", nc.id),
    ]
    assert child.manifest.non_commercial
    shown = run_cli("artifacts", "show", child.id, cwd=wb.root).stdout
    assert (
        f"  licence   mit (tiny-musicgen-melody); cc-by-nc-4.0 (tiny-musicgen via {nc.id}): NON-COMMERCIAL USE ONLY\n"
        in shown
    )
    listed = run_cli("artifacts", "list", cwd=wb.root).stdout
    assert "music (NC)" in listed and "(NC): made with a non-commercial model" in listed
    from harmonia.ui.views import summary_html

    assert "Non-commercial use only: made with tiny-musicgen (cc-by-nc-4.0)." in summary_html(child)


# -- threads and cancel -------------------------------------------------------------------------
def test_two_threads_at_once_give_the_bytes_of_one_after_the_other(music_wb, tmp_path):
    requests = [
        MusicRequest("calm piano", duration_s=1.5, seed=5),
        MusicRequest("drums", duration_s=1.5, seed=6),
    ]
    other = tmp_path / "other"
    shutil.copytree(music_wb.root, other)
    import torch

    default = torch.get_num_threads()
    settings = [None, 1]  # thread 0 takes the default thread count while thread 1 pins 1 thread
    alone = [
        generate(music_wb, "tiny-musicgen", r, threads=t, previews=False).artifact
        for r, t in zip(requests, settings, strict=True)
    ]
    # the same machine: the other workbench gets this one's calibration of the fast paths
    (other / ".harmonia").mkdir(exist_ok=True)
    shutil.copy(music_wb.state_dir / "calibration.json", other / ".harmonia" / "calibration.json")
    wb2, found, errors = Workbench.open(other), {}, []
    start = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            start.wait(10)  # both enter generate() together
            found[i] = generate(
                wb2, "tiny-musicgen", requests[i], threads=settings[i], previews=False
            ).artifact
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    # thread 0 took the default, thread 1 asked for 1: each records (and used) its own
    assert found[0].manifest.runtime.threads == default and found[1].manifest.runtime.threads == 1
    for i in range(2):  # the same ids and bytes as the same requests one after the other
        assert found[i].id == alone[i].id
        assert sha(found[i].file(found[i].outputs[0])) == sha(alone[i].file(alone[i].outputs[0]))
    assert reproduce(wb2, found[0].id).identical and reproduce(wb2, found[1].id).identical


def test_cancel_stops_between_steps_and_writes_nothing(music_wb):
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 5:
            stop.set()

    with pytest.raises(
        Cancelled, match=r"^Generation cancelled at step 5 of \d+; no artifact was written\.$"
    ):
        generate(
            music_wb,
            "tiny-musicgen",
            MusicRequest("x", duration_s=2.0, seed=1),
            progress=progress,
            cancel=stop,
        )
    assert seen == [1, 2, 3, 4, 5]
    assert not music_wb.artifacts_dir.exists() or not any(music_wb.artifacts_dir.iterdir())


def test_a_fault_inside_the_artifact_write_leaves_nothing_that_looks_whole(music_wb, monkeypatch):
    import harmonia.generation as generation
    from harmonia.media import write_take

    written = []

    def failing(folder, index, take, settings, previews):
        if index == 1:  # take-0 (and its picture) are on disk by now
            written.extend(p.name for p in folder.iterdir())
            raise OSError("disk full (injected)")
        return write_take(folder, index, take, settings, previews)

    monkeypatch.setattr(generation, "write_take", failing)
    with pytest.raises(OSError, match="disk full"):
        generate(music_wb, "tiny-musicgen", MusicRequest(["a", "b"], duration_s=0.5, seed=1))
    assert sorted(written) == ["take-0.png", "take-0.wav"]
    assert list(music_wb.artifacts_dir.iterdir()) == []  # no artifact, no staging folder


# -- defaults and limits from one place ---------------------------------------------------------
def test_params_section_becomes_the_request_everywhere(music_wb):
    params = music_wb.root / "params.yaml"
    params.write_text(
        params.read_text().replace(
            "music:\n  model: tiny-musicgen\n  duration_s: 1.0\n",
            "music:\n  model: tiny-musicgen\n  duration_s: 6.0\n  extend_stride_s: 2.0\n  top_k: 50\n"
            "  precision: int8\n  format: flac\n  batch_size: 2\n",
        )
    )
    d = kind_defaults(Workbench.open(music_wb.root), "music")
    assert d.model == "tiny-musicgen" and d.batch_size == 2
    request = d.request_for(("x",), seed=3, top_k=None, temperature=0.5)
    assert (request.duration_s, request.extend_stride_s, request.top_k, request.temperature) == (
        6.0,
        2.0,
        50,
        0.5,
    )
    assert d.run_settings()["precision"] == "int8" and d.run_settings()["fmt"] == "flac"
    params.write_text(params.read_text().replace("  batch_size: 2\n", "  batch_size: 2\n  colour: red\n"))
    with pytest.raises(ParamsError, match=r"^params.yaml: music.colour is not a setting of music; allowed: "):
        kind_defaults(Workbench.open(music_wb.root), "music")


def test_the_studio_offers_only_what_the_engine_accepts(music_wb):
    from harmonia.ui.studio import Studio

    studio = Studio(music_wb)
    bound = limits(MusicRequest)
    for widget, name in ((studio.duration, "duration_s"), (studio.top_p, "top_p"), (studio.top_k, "top_k"),
                         (studio.guidance, "guidance_scale"), (studio.temperature, "temperature")):  # fmt: skip
        low, high = bound[name].low, bound[name].high
        assert low <= widget.min and widget.max <= high, name
        assert widget.min > low or not bound[name].low_open, name


def test_tiny_name_must_be_declared_before_building(workbench):
    proc = run_cli("models", "tiny", "musicgen", "--name", "my-tiny", cwd=workbench.root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "error: Model 'my-tiny' is not declared in params.yaml, so nothing could use it after the build. "
        f"Add 'my-tiny: {{builder: musicgen, seed: 0, engine: musicgen}}' under 'models:' in {workbench.root / 'params.yaml'}, "
        "then build again.\n"
    )
    assert not (workbench.root / "models" / "my-tiny").exists()
    from harmonia.tiny import build_tiny

    with pytest.raises(
        BuilderError, match=r"declares model 'tiny-musicgen-melody' with builder musicgen-melody"
    ):
        build_tiny(workbench, "musicgen", name="tiny-musicgen-melody")


# -- the package declares what it imports ------------------------------------------------------
def test_pyproject_lists_every_package_harmonia_imports():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(d) for d in project["dependencies"]}
    extras = {_norm(d) for deps in project["optional-dependencies"].values() for d in deps}
    dists = packages_distributions()
    for path in sorted((REPO_ROOT / "harmonia").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module-level imports: what importing the module needs
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "harmonia" or top not in dists:
                    continue  # the standard library
                needed = {_norm(d) for d in dists[top]}
                allowed = declared | (extras if "ui" in path.parts else set())
                assert needed & allowed, f"{path.relative_to(REPO_ROOT)} imports {top}, not in pyproject.toml"


def _norm(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_manifest_round_trip_refuses_unknown_fields(music_wb):
    art = generate(
        music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=1), previews=False
    ).artifact
    data = art.manifest.to_json()
    assert Manifest.from_json(json.loads(json.dumps(data))) == art.manifest
    data["runtime"]["turbo"] = True
    with pytest.raises(ArtifactError, match=r"lacks or mistypes field 'RuntimeRecord.turbo \(unknown\)'"):
        Manifest.from_json(data)
    with pytest.raises(ArtifactError, match=r"has schema 'harmonia.manifest/9'; this Harmonia reads"):
        Manifest.from_json({**data, "schema": "harmonia.manifest/9"})


def test_prompts_too_long_for_the_model_are_refused_before_it_loads(music_wb, monkeypatch):
    from harmonia.engines.musicgen import MusicGenEngine

    monkeypatch.setattr(
        MusicGenEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    with pytest.raises(RequestError, match=r"^prompts\[0\] has 100000 characters; the limit is 2000\.$"):
        generate(music_wb, "tiny-musicgen", MusicRequest("a" * 100_000, seed=1))
    with pytest.raises(
        RequestError,
        match=r"^prompts\[1\] is 999 tokens long; the model's text encoder reads at most 512\. Shorten it\.$",
    ):
        generate(music_wb, "tiny-musicgen", MusicRequest(["ok", "a b " * 499], seed=1))
    assert not music_wb.artifacts_dir.exists() or not any(music_wb.artifacts_dir.iterdir())


def test_the_same_output_has_one_id_and_a_damaged_artifact_is_made_again(music_wb):
    request = MusicRequest("x", duration_s=0.6, seed=2)
    a = generate(music_wb, "tiny-musicgen", request, normalize_lufs=-14, previews=False).artifact
    b = generate(music_wb, "tiny-musicgen", request, normalize_lufs=-14.0, previews=False)
    assert b.cached and b.artifact.id == a.id  # -14 and -14.0 are one loudness target
    good = sha(a.file("take-0.wav"))
    a.file("take-0.wav").unlink()
    again = generate(music_wb, "tiny-musicgen", request, normalize_lufs=-14, previews=False)
    assert not again.cached and again.artifact.id == a.id and sha(again.artifact.file("take-0.wav")) == good


def test_the_fast_path_is_part_of_the_id_and_reproduce_replays_it(music_wb, monkeypatch):
    request = MusicRequest("x", duration_s=0.6, seed=2)
    made = {}
    for path in ("linear", "matmul"):
        monkeypatch.setenv("HARMONIA_FEW_ROW_PRODUCTS", path)
        made[path] = generate(music_wb, "tiny-musicgen", request, threads=2, previews=False).artifact
        assert made[path].manifest.runtime.paths == {"few_row_products": path}
        assert made[path].manifest.identity["runtime"]["paths"] == {"few_row_products": path}
    assert made["linear"].id != made["matmul"].id
    monkeypatch.setenv("HARMONIA_FEW_ROW_PRODUCTS", "linear")  # this machine would now pick linear
    verdict = reproduce(music_wb, made["matmul"].id)  # ... but the artifact's own path is replayed
    assert verdict.identical
    from harmonia.generation import load_engine

    assert load_engine(
        music_wb, "tiny-musicgen", threads=2, paths=(("few_row_products", "matmul"),)
    ).loaded.choices == {"few_row_products": "matmul (recorded)"}


def test_reproduce_refuses_a_tampered_manifest_in_one_line(music_wb):
    art = generate(
        music_wb, "tiny-musicgen", MusicRequest(["a", "b"], duration_s=0.5, seed=1), previews=False
    ).artifact
    path = art.path / "manifest.json"
    original = path.read_text()
    cases = [
        (
            lambda d: d["outputs"].pop(),
            rf"^Artifact {art.id}'s manifest lists 1 output, but its request makes 2",
        ),
        (
            lambda d: d["request"].pop("prompts"),
            r"^request field 'prompts' must be a list of strings, got None\.$",
        ),
        (
            lambda d: d["request"].update(prompts="ab"),
            r"^request field 'prompts' must be a list of strings, got 'ab'\.$",
        ),
        (
            lambda d: d["runtime"].update(device=3),
            r"lacks or mistypes field RuntimeRecord.device \(got int 3\)",
        ),
        (lambda d: d["model"].update(name=["x"]), r"lacks or mistypes field ModelRecord.name \(got list"),
        (lambda d: d["request"].update(top_k=-5), r"^top_k must be an integer in \[0, 65536\]"),
    ]
    for change, message in cases:
        data = json.loads(original)
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises((ArtifactError, RequestError), match=message):
            reproduce(music_wb, art.id)
    path.write_text(original)
    art.file("take-1.wav").unlink()
    verdict = reproduce(music_wb, art.id)
    assert not verdict.identical and "stored take-1.wav is missing" in verdict.differences
