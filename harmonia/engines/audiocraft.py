"""audiocraft's own models, AudioGen (sound effects, one-shots, loops) and MAGNeT (music), run in a worker.

audiocraft 1.3.0 pins torch 2.1, torchaudio, xformers and av 11, so it cannot share Harmonia's
environment. Its engines run in a process of their own, in a virtual environment of their own
(``.venv-audiocraft`` beside the checkout, made by ``make audiocraft`` or on first use): that
environment reads Harmonia's packages (torch, numpy, transformers) through a ``.pth`` line
placed *after* its own site-packages, and holds only audiocraft (installed without its
dependencies), its light dependencies at exact pins, and two stand-ins: an ``xformers.ops``
on torch's scaled-dot-product attention and a ``torchaudio.transforms`` on ``torch.stft``
(harmonia/workers/standins). Harmonia's own process never imports audiocraft, xformers or
the stand-ins.

Harmonia talks to the worker (harmonia/workers/audiocraft_worker.py) over a pipe in JSON
lines: a request per line, progress after every step, a result or an error; a cancel line
stops a generation at its next step. A worker that dies gives a :class:`WorkerError` naming
its exit code and last words, and nothing is written.

Snapshots are audiocraft's own layout (``state_dict.bin`` and ``compression_state_dict.bin``,
as on the hub): torch pickles. Harmonia verifies them like any snapshot, and loads them only
when the model's params.yaml entry says ``allow_pickle: true``; even then the worker loads
with ``weights_only=True`` first and unpickles fully only if that fails. The manifest records
which files were pickles, that they were allowed, and whether full unpickling was needed.

A model's params.yaml entry may name other snapshots it reads (its *companions*, verified the
same way, their names and digests part of every id they touch, their licences in the manifest):
``text_encoder:`` the local T5 its text conditioner loads (audiocraft would download it by name;
the worker loads this folder instead, ``local_files_only``), and ``mbd:`` the Multi-Band
Diffusion decoder that ``decoder="mbd"`` runs on MAGNeT's tokens in the worker.

This module knows the worker and the two engines; it knows nothing about artifacts or the UI.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harmonia.engines.base import (
    PICKLED,
    TORCH_LOCK,
    Cancel,
    LoadedModel,
    Progress,
    Runtime,
    Steps,
    Timer,
    check_seed,
    choose_seed,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
)
from harmonia.errors import Cancelled, RequestError, WorkerError
from harmonia.inventory import Inventory
from harmonia.media import AudioTake
from harmonia.requests import MAX_PROMPT_CHARS, MusicRequest, SampleRequest, check_decoder, check_limits
from harmonia.samples import check_sample_request, generated_seconds, shape_take
from harmonia.workbench import Workbench

AUDIOCRAFT_VERSION = "1.3.0"
# What the worker's environment holds of its own (installed with --no-deps): audiocraft and the
# light dependencies its generation path imports. Everything else (torch, numpy, transformers,
# omegaconf, hydra, librosa, av, soundfile) is Harmonia's, read through the .pth line.
WORKER_PINS = (
    f"audiocraft=={AUDIOCRAFT_VERSION}",
    "einops==0.8.2",
    "julius==0.2.8",
    "num2words==0.5.14",
    "docopt==0.6.2",
    "flashy==0.0.2",
    "dora_search==0.1.13",
    "treetable==0.2.6",
    "retrying==1.4.2",
    "submitit==1.5.4",
    "colorlog==6.12.0",
    "torchmetrics==1.9.0",
    "lightning-utilities==0.15.3",
    "spacy==3.8.18",
    "spacy-legacy==3.0.12",
    "spacy-loggers==1.0.5",
    "thinc==8.3.14",
    "blis==1.3.4",
    "cymem==2.0.16",
    "preshed==3.0.15",
    "murmurhash==1.0.16",
    "srsly==2.5.6",
    "catalogue==2.0.10",
    "confection==1.3.4",
    "wasabi==1.1.3",
    "weasel==1.0.1",
    "cloudpathlib==0.26.0",
    "smart_open==9.0.4",
    "wrapt==2.5.2",
)
WORKERS = Path(__file__).resolve().parent.parent / "workers"
WORKER_SCRIPT = WORKERS / "audiocraft_worker.py"
STANDINS = WORKERS / "standins"
VENV_ENV = "HARMONIA_AUDIOCRAFT_VENV"  # where the worker's environment lives (default: beside the checkout)
STAMP = ".harmonia-worker.json"
LM_FILE, COMPRESSION_FILE = "state_dict.bin", "compression_state_dict.bin"
# Multi-Band Diffusion for MusicGen's 32 kHz EnCodec tokens (MAGNeT shares them), by the hub's file name
MBD_FILE = "mbd_musicgen_32khz.th"
T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024}  # audiocraft's T5Conditioner widths
PRECISIONS = ("exact",)
MAX_AUDIOGEN_S = 30.0  # longest AudioGen clip (windows of the model's segment, extended by EXTEND_STRIDE_S)
EXTEND_STRIDE_S = 2.0  # AudioGen's own default
MAGNET_DECODING_STEPS = (20, 10, 10, 10)  # MAGNeT's own default, per codebook


# -- the worker's environment -------------------------------------------------------------------
def worker_venv() -> Path:
    """Where the worker's virtual environment lives: $HARMONIA_AUDIOCRAFT_VENV, else beside the checkout."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser().resolve()
    checkout = WORKERS.parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".venv-audiocraft"
    return Path.home() / ".cache" / "harmonia" / "venv-audiocraft"


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _wanted() -> dict[str, Any]:
    """What the worker's environment must be: compared with its stamp to decide a rebuild."""
    standins = hashlib.sha256()
    for path in sorted(STANDINS.rglob("*.py")):
        standins.update(path.relative_to(STANDINS).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "python": sys.version.split()[0],
        "main_site_packages": sysconfig.get_paths()["purelib"],
        "pins": list(WORKER_PINS),
        "standins": standins.hexdigest(),
    }


def worker_env_ready(venv: Path | None = None) -> bool:
    venv = venv or worker_venv()
    try:
        return json.loads((venv / STAMP).read_text()) == _wanted()
    except (OSError, ValueError):
        return False


def ensure_worker_env(venv: Path | None = None, quiet: bool = False) -> Path:
    """The worker's environment, made (or remade, when the pins or stand-ins changed) if needed.

    Making it needs PyPI once (a few MB: audiocraft without its dependencies, and the light
    ones); it never installs a second torch. Returns the environment's python.

    Example:
        >>> ensure_worker_env()  # doctest: +SKIP
        PosixPath('/work/.venv-audiocraft/bin/python')
    """
    venv = venv or worker_venv()
    python = venv / "bin" / "python"
    if worker_env_ready(venv):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time; the others find it made
        if worker_env_ready(venv):
            return python
        if not quiet:
            print(
                f"Making the audiocraft worker's environment in {venv} (once; needs PyPI) ...",
                file=sys.stderr,
            )
        # 1. A bare venv on this Python, then Harmonia's packages behind its own.
        _run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], "create the venv")
        site = _site_packages(venv)
        (site / "zz-harmonia-main.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # 2. audiocraft and its light dependencies, exact pins, no dependency resolution (no second torch).
        _run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--no-compile", "--target", str(site), "--upgrade", *WORKER_PINS],
            "install audiocraft and its light dependencies from PyPI",
        )  # fmt: skip
        # 3. The stand-ins, in the worker's environment only.
        for package in ("xformers", "torchaudio"):
            target = site / package
            target.mkdir(exist_ok=True)
            for source in (STANDINS / package).glob("*.py"):
                (target / source.name).write_bytes(source.read_bytes())
        (venv / STAMP).write_text(json.dumps(_wanted(), indent=1) + "\n")
    return python


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: ours without PYTHONPATH/PYTHONHOME or any Hugging Face token (it is
    always offline: every snapshot it reads was fetched and verified before), offline switches on."""
    env = {
        k: v
        for k, v in environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME")
        and not (k.upper().startswith(("HF_", "HUGGING")) and "TOKEN" in k.upper())
    }
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1", PYTHONNOUSERSITE="1"
    )
    return env


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise WorkerError(
            f"Could not {what} for the audiocraft worker (exit code {done.returncode}): {' | '.join(tail)}. "
            "Check the network to PyPI and run `make audiocraft` again."
        )


# -- the worker process -------------------------------------------------------------------------
class Worker:
    """One worker process and its pipe; ``call(op, ...)`` sends a request and waits for its answer.

    Example:
        >>> Worker.shared().call("hello")["versions"]["audiocraft"]  # doctest: +SKIP
        '1.3.0'
    """

    _shared: ClassVar[Worker | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, python: Path):
        self.python = python
        self.stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (lives as long as the worker)
        self.process = subprocess.Popen(
            [str(python), "-u", str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=worker_environment(os.environ),
            text=True,
            bufsize=1,
        )
        self.next_id = 0
        self.lock = threading.Lock()
        self.loaded: tuple | None = None  # (snapshot, family, digest, text encoder) in the worker now
        self.mbd: tuple | None = None  # (snapshot, digest) of the MBD decoder loaded over it
        self.mbd_used = False  # whether loading it needed full unpickling
        self.info: dict | None = None

    @classmethod
    def shared(cls) -> Worker:
        """The process's worker, started (and its environment made) on first use, restarted if it died."""
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.alive:
                cls._shared = cls(ensure_worker_env())
            return cls._shared

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def hello(self) -> dict:
        if self.info is None:
            self.info = self.call("hello")
        return self.info

    def call(
        self, op: str, progress: Progress | None = None, cancel: Cancel | None = None, **fields: Any
    ) -> dict:
        """Send ``op`` with ``fields``; relay progress; stop at the next step when ``cancel`` is set."""
        with self.lock:
            self.next_id += 1
            rid = self.next_id
            self._write({"op": op, "id": rid, **fields})
            stopping: BaseException | None = None
            watch = Steps(0, None, cancel)
            while True:
                line = self.process.stdout.readline()
                if not line:
                    self._died(op)
                message = json.loads(line)
                if message.get("id") != rid:
                    continue
                kind = message.get("type")
                if kind == "progress":
                    if stopping is None and watch.cancelled():
                        stopping = Cancelled(
                            f"Generation cancelled at step {message['done']} of {message['total']}; "
                            "no artifact was written."
                        )
                        self._write({"op": "cancel"})
                    elif stopping is None and progress is not None:
                        try:
                            progress(int(message["done"]), int(message["total"]))
                        except BaseException as exc:  # progress raising stops the generation too
                            stopping = exc
                            self._write({"op": "cancel"})
                    continue
                if stopping is not None:
                    raise stopping
                if kind == "error":
                    if message.get("error") == "Cancelled":
                        raise Cancelled(f"Generation {message['message']}; no artifact was written.")
                    raise WorkerError(
                        f"The audiocraft worker could not {op}: {message.get('error')}: {message.get('message')}"
                    )
                return message

    def _write(self, message: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died(message.get("op", "?"))

    def _died(self, op: str) -> None:
        code = self.process.wait()
        self.stderr.seek(0)
        words = [w for w in self.stderr.read().decode("utf-8", "replace").strip().splitlines() if w.strip()]
        last = " | ".join(words[-3:]) if words else "nothing on stderr"
        raise WorkerError(
            f"The audiocraft worker exited with code {code} during '{op}'; nothing was written. "
            f"Its last words: {last}. Run again (a new worker starts); if it repeats, run "
            f"`make audiocraft` to remake its environment."
        )

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(OSError, ValueError):
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.flush()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def shutdown() -> None:
    """Stop the shared worker (it is started again on next use)."""
    with Worker._shared_lock:
        if Worker._shared is not None:
            Worker._shared.close()
            Worker._shared = None


# -- snapshots ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What an audiocraft snapshot's configs say (read without audiocraft: ``weights_only`` torch.load)."""

    family: str  # "audiogen" (transformer_lm) or "magnet" (transformer_lm_magnet)
    sample_rate: int
    channels: int
    frame_rate: float
    segment_s: float  # the model's window (MAGNeT: the only length it makes)
    n_q: int
    card: int  # codebook size (tokens per codebook)
    conditioners: tuple[str, ...]
    latent_dim: int | None = None  # the EnCodec latents' width (what an MBD decoder is conditioned on)
    text_model: str | None = None  # the T5 its text conditioner names ("t5-base"); None: another conditioner


_FACTS: dict[tuple, ModelFacts] = {}


def model_facts(snapshot: Path, allow_pickle: bool = False) -> ModelFacts:
    """Read a snapshot's two configs; RequestError if it is not an audiocraft AudioGen/MAGNeT snapshot."""
    try:
        key = tuple(
            (str(snapshot / f), (snapshot / f).stat().st_mtime_ns) for f in (LM_FILE, COMPRESSION_FILE)
        )
    except OSError:
        raise _not_audiocraft(snapshot) from None
    if key not in _FACTS:
        try:
            lm, compression = _config(snapshot / LM_FILE), _config(snapshot / COMPRESSION_FILE)
        except PermissionError:  # configs behind full pickles: ask the worker, which may unpickle them
            answer = Worker.shared().call("facts", snapshot=str(snapshot), allow_pickle=allow_pickle)
            lm, compression = None, answer
        try:
            _FACTS[key] = _facts(lm, compression)
        except (KeyError, TypeError, ValueError):
            raise _not_audiocraft(snapshot) from None
    return _FACTS[key]


def _config(path: Path) -> dict:
    """The ``xp.cfg`` of an audiocraft checkpoint, memory-mapped, ``weights_only`` (no code runs)."""
    import pickle

    import torch
    import yaml

    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError):
        raise PermissionError(path) from None
    cfg = pkg["xp.cfg"]
    return yaml.safe_load(cfg) if isinstance(cfg, str) else dict(cfg)


def _facts(lm: dict | None, compression: dict) -> ModelFacts:
    if lm is None:  # the worker's answer
        family = "magnet" if compression["lm_model"] == "transformer_lm_magnet" else "audiogen"
        return ModelFacts(family, compression["sample_rate"], compression["channels"], compression["frame_rate"],
                          compression["segment_duration_s"], compression["n_q"], compression["card"],
                          tuple(compression["conditioners"]), compression.get("latent_dim"),
                          compression.get("text_model"))  # fmt: skip
    family = {"transformer_lm": "audiogen", "transformer_lm_magnet": "magnet"}[lm["lm_model"]]
    hop = math.prod(compression["seanet"]["ratios"])
    rate = int(compression["encodec"]["sample_rate"])
    return ModelFacts(
        family=family,
        sample_rate=rate,
        channels=int(compression["encodec"].get("channels", 1)),
        frame_rate=rate / hop,
        segment_s=float(lm["dataset"]["segment_duration"]),
        n_q=int(lm["transformer_lm"]["n_q"]),
        card=int(lm["transformer_lm"]["card"]),
        conditioners=tuple(sorted(lm.get("conditioners") or {})),
        latent_dim=int(compression["seanet"]["dimension"]),
        text_model=_text_model(lm),
    )


def _text_model(lm: dict) -> str | None:
    description = (lm.get("conditioners") or {}).get("description") or {}
    return description.get("t5", {}).get("name") if description.get("model") == "t5" else None


def _not_audiocraft(snapshot: Path) -> RequestError:
    return RequestError(
        f"{snapshot} is not an audiocraft snapshot ({LM_FILE} and {COMPRESSION_FILE} with their 'xp.cfg'); "
        "pick an audiogen or magnet model."
    )


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AudiocraftResult:
    """What a generation produced: one take per prompt (and take index), float32 ``[channels, samples]``."""

    audio: tuple[np.ndarray, ...]
    prompts: tuple[str, ...]
    sample_rate: int
    request: Any  # as run: seed and lengths filled in
    steps: int
    generate_s: float
    generated_s: float  # seconds the model generated per take (before shaping)
    take_details: tuple[dict, ...] = field(default=(), repr=False)
    decoder: dict | None = None  # how tokens became audio (MAGNeT: encodec, or the MBD snapshot used)

    @property
    def takes(self) -> tuple[AudioTake, ...]:
        return tuple(AudioTake(a, self.sample_rate, p) for a, p in zip(self.audio, self.prompts, strict=True))

    @property
    def inputs(self) -> dict:
        return {role: None for role in type(self.request).INPUTS}

    def details(self) -> dict[str, Any]:
        decoder = {"decoder": self.decoder} if self.decoder is not None else {}
        return {"generated_s": round(self.generated_s, 6), "takes": list(self.take_details), **decoder}


# -- the engines --------------------------------------------------------------------------------
class _AudiocraftEngine:
    """What AudioGen and MAGNeT share: the snapshot, the worker, loading, the manifest's entry."""

    family: ClassVar[str]
    kind: ClassVar[str]
    code_version: ClassVar[int] = 1  # bump when a change here, in the worker or in WORKER_PINS changes bytes
    packages: ClassVar[tuple[str, ...]] = ("torch", "numpy", "omegaconf")  # audiocraft: WORKER_PINS (code)
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(
        self, worker: Worker, loaded: LoadedModel, facts: ModelFacts, answer: dict, pickled: list,
        wb: Workbench | None = None, text_encoder: Companion | None = None,
    ):  # fmt: skip
        self.wb = wb
        self.text_encoder = text_encoder
        self.worker = worker
        self.loaded = loaded
        self.facts = facts
        self.sample_rate = int(answer["sample_rate"])
        self.channels = int(answer["channels"])
        self.answer = answer
        self.pickled = pickled

    @classmethod
    def load(cls, wb: Workbench, name: str, runtime: Runtime | None = None, **settings: Any):
        """Load a declared, present and verified audiocraft snapshot in the worker.

        Args:
            wb: the workbench.
            name: a model from params.yaml whose ``engine:`` is this engine; its entry must say
                ``allow_pickle: true`` (audiocraft's checkpoints are torch pickles).
            runtime: device "cpu" (the worker runs on the CPU), dtype float32, threads (recorded:
                they change the bits).
        """
        runtime = runtime or Runtime(**settings)
        cls.check_runtime(runtime)
        chosen = pick_device(runtime.device)
        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory, pickled = _open(wb, name, cls.name)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            facts = model_facts(path, True)
            _check_family(facts, cls, name)
            text_encoder = _text_encoder(wb, spec, facts)
            worker, answer = _load_in_worker(path, cls.family, threads, inventory.digest, text_encoder)
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        return cls(worker, loaded, facts, answer, pickled, wb, text_encoder)

    # the companions its load reads (the T5): part of the key of a loaded engine, so a changed T5
    # snapshot loads the engine again; the MBD decoder is loaded per request (``_ensure_mbd``)
    load_companions: ClassVar[tuple[str, ...]] = ("text_encoder",)

    @classmethod
    def companions(cls, wb: Workbench, model: str, request: Any) -> dict[str, Inventory]:
        """The other snapshots a generation reads, verified: the T5 text encoder (when the checkpoint's
        conditioner is T5) and the MBD decoder (``decoder="mbd"``). Their digests are part of the id."""
        spec = wb.spec("model", model)
        facts = model_facts(wb.snapshot_dir("model", model), True)
        found = {}
        text_encoder = _text_encoder(wb, spec, facts)
        if text_encoder is not None:
            found["text_encoder"] = text_encoder.inventory
        if getattr(request, "decoder", "encodec") == "mbd":
            found["decoder"] = _mbd(wb, spec, facts).inventory
        return found

    def _ensure(self) -> Worker:
        """The worker, holding this engine's model (a new worker after a crash; a reload after another model)."""
        key = _loaded_key(self.loaded.path, self.family, self.loaded.inventory.digest, self.text_encoder)
        if not self.worker.alive or self.worker.loaded != key or self.worker is not Worker.shared():
            self.worker, self.answer = _load_in_worker(
                self.loaded.path,
                self.family,
                self.loaded.threads,
                self.loaded.inventory.digest,
                self.text_encoder,
            )
        return self.worker

    def describe(self) -> dict:
        """The manifest's engine entry: the worker's packages, the stand-ins, the pickles and how they loaded."""
        info = self.worker.hello()
        return {
            "name": self.name,
            "family": self.family,
            "class": self.answer.get("lm_class"),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.facts.frame_rate,
            "segment_s": self.facts.segment_s,
            "worker": {
                "protocol": info["protocol"],
                "versions": info["versions"],
                "standins": info["standins"],
            },
            "pickled_weights": {
                "files": self.pickled,
                "allowed_by": "params.yaml allow_pickle: true",
                "snapshot_verified": True,
                "full_unpickling": bool(self.answer.get("pickle_used")),  # False: weights_only sufficed
            },
            **({"text_encoder": self.text_encoder.record()} if self.text_encoder is not None else {}),
        }

    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision not in PRECISIONS:
            raise RequestError(
                f"precision must be exact for the {cls.name} engine, got {runtime.precision!r}."
            )
        if runtime.device not in (None, "auto", "cpu"):
            raise RequestError(
                f"device must be cpu for the {cls.name} engine (its worker runs on the CPU), got {runtime.device!r}."
            )
        if runtime.dtype not in (None, "float32"):
            raise RequestError(f"dtype must be float32 for the {cls.name} engine, got {runtime.dtype!r}.")

    @classmethod
    def check_resources(cls, request: Any, snapshot: Path) -> None:
        from harmonia.engines.base import check_memory

        weights = sum(p.stat().st_size for p in snapshot.glob("*.bin"))
        check_memory(2 * weights, f"model '{snapshot.name}' ({weights / 2**30:.1f} GiB of weights)",
                     "close other work, or use a machine with more memory.")  # fmt: skip

    @classmethod
    def fast_paths(cls, wb: Workbench, snapshot: Path, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        return ()

    def _run(
        self, takes: list[dict], duration_s: float, params: dict, steps_per_take: int, progress, cancel,
        decoder: str = "encodec",
    ):  # fmt: skip
        """The worker's generation: float32 ``[channels, samples]`` per take, and its step count."""
        answer = self._ensure().call(
            "generate", progress, cancel, takes=takes, duration_s=duration_s, params=params,
            steps_per_take=steps_per_take, threads=self.loaded.threads, decoder=decoder,
        )  # fmt: skip
        audio = []
        for item in answer["audio"]:
            raw = np.frombuffer(base64.b64decode(item["data"]), dtype="<f4").reshape(item["shape"])
            audio.append(np.ascontiguousarray(raw, dtype=np.float32))
        return audio, int(answer["steps"]), float(answer["generate_s"])


def _loaded_key(path, family: str, digest: str, text_encoder: Companion | None) -> tuple:
    return (str(path), family, digest, text_encoder.inventory.digest if text_encoder else None)


def _load_in_worker(
    path, family: str, threads: int, digest: str, text_encoder: Companion | None = None
) -> tuple[Worker, dict]:
    worker = Worker.shared()
    worker.hello()
    worker.loaded, worker.mbd = (
        None,
        None,
    )  # a load drops the worker's MBD too (it decodes that model's tokens)
    answer = worker.call(
        "load", snapshot=str(path), family=family, allow_pickle=True, threads=threads,
        text_encoder=str(text_encoder.path) if text_encoder else None,
    )  # fmt: skip
    worker.loaded = _loaded_key(path, family, digest, text_encoder)
    return worker, answer


# -- the other snapshots a model reads: its T5 text encoder, its MBD decoder --------------------
@dataclass(frozen=True)
class Companion:
    """Another verified snapshot an audiocraft model reads (its T5, its MBD), named in its params.yaml entry."""

    role: str  # "text_encoder" or "decoder"
    path: Path
    inventory: Inventory
    facts: dict = field(
        default_factory=dict
    )  # what it is (the T5's name and width, the MBD's bands and steps)

    def record(self) -> dict:
        """The manifest's entry: name, source, digest, licence, and what it is."""
        src = self.inventory.source
        return {
            "model": self.inventory.name, "repo": src.repo, "revision": src.revision, "source": src.type,
            "inventory_digest": self.inventory.digest, "license": self.inventory.license, **self.facts,
        }  # fmt: skip


def _text_encoder(wb: Workbench, spec, facts: ModelFacts) -> Companion | None:
    """The local T5 snapshot of a checkpoint whose text conditioner is T5 (never downloaded by name)."""
    if facts.text_model is None:
        if spec.text_encoder is not None:
            raise RequestError(
                f"Model '{spec.name}' has no T5 text conditioner, but its params.yaml entry names text_encoder "
                f"'{spec.text_encoder}'; remove that line."
            )
        return None
    if spec.text_encoder is None:
        raise RequestError(
            f"Model '{spec.name}' conditions on T5 '{facts.text_model}', which Harmonia loads from a local snapshot, "
            f"never by name from the hub: add 'text_encoder: {facts.text_model}' to its params.yaml entry (a "
            f"model entry for {facts.text_model}, fetched with `harmonia models fetch {facts.text_model}`)."
        )
    _, path, inventory = open_snapshot(wb, spec.text_encoder, "t5")
    try:
        width = json.loads((path / "config.json").read_text())["d_model"]
    except (OSError, ValueError, KeyError):
        raise RequestError(
            f"text_encoder '{spec.text_encoder}' of model '{spec.name}' is not a T5 snapshot (config.json with "
            "d_model); name a T5 model's entry."
        ) from None
    wanted = T5_DIMS.get(facts.text_model)
    if wanted is not None and width != wanted:
        raise RequestError(
            f"Model '{spec.name}' conditions on T5 '{facts.text_model}' ({wanted} wide), but its text_encoder "
            f"'{spec.text_encoder}' is {width} wide; name a {facts.text_model} snapshot."
        )
    return Companion("text_encoder", path, inventory, {"t5": facts.text_model, "d_model": width})


_MBD_FACTS: dict[tuple, dict] = {}


def _mbd(wb: Workbench, spec, facts: ModelFacts) -> Companion:
    """The model's Multi-Band Diffusion snapshot (params.yaml ``mbd:``), verified and checked against its tokens."""
    if spec.mbd is None:
        raise RequestError(
            f"decoder mbd: model '{spec.name}' names no Multi-Band Diffusion snapshot; add 'mbd: NAME' to its "
            "params.yaml entry (e.g. mbd: multiband-diffusion), or use --decoder encodec."
        )
    mbd_spec = wb.spec("model", spec.mbd)
    if not mbd_spec.allow_pickle:
        raise RequestError(
            f"Model '{spec.mbd}' is an audiocraft MBD checkpoint ({MBD_FILE}: a torch pickle); Harmonia loads it "
            "only when its params.yaml entry says 'allow_pickle: true'. Add that if you trust the file."
        )
    _, path, inventory = open_snapshot(wb, spec.mbd, "mbd", allow_pickle=True)
    try:
        key = (str(path / MBD_FILE), (path / MBD_FILE).stat().st_mtime_ns)
    except OSError:
        raise RequestError(
            f"Model '{spec.mbd}' has no {MBD_FILE}: it is not a Multi-Band Diffusion snapshot for MusicGen tokens."
        ) from None
    if key not in _MBD_FACTS:  # its configs are pickled objects: the worker reads them
        answer = Worker.shared().call("mbd_facts", snapshot=str(path), allow_pickle=True)
        _MBD_FACTS[key] = {
            k: answer[k] for k in ("sample_rate", "channels", "codec_dim", "n_bands", "steps_per_band")
        }
    mbd = _MBD_FACTS[key]
    decodes = (mbd["sample_rate"], mbd["channels"], mbd["codec_dim"])
    makes = (facts.sample_rate, facts.channels, facts.latent_dim)
    if decodes != makes:
        raise RequestError(
            f"decoder mbd: '{spec.mbd}' decodes {_codec(*decodes)}, but model '{spec.name}' makes {_codec(*makes)}: "
            "MBD cannot decode its tokens. Use --decoder encodec."
        )
    return Companion("decoder", path, inventory, dict(mbd))


def _codec(rate: int, channels: int, width: int | None) -> str:
    return f"{rate} Hz {'mono' if channels == 1 else f'{channels}-channel'} EnCodec tokens ({width}-wide latents)"


def _open(wb: Workbench, name: str, engine: str):
    """The snapshot, verified, with its pickles allowed only by the model's params.yaml entry."""
    spec = wb.spec("model", name)
    if spec.engine is not None and spec.engine != engine:
        raise RequestError(
            f"Model '{name}' is for the {spec.engine} engine, not {engine}. Pick a {engine} model."
        )
    if not spec.allow_pickle:
        raise RequestError(
            f"Model '{name}' is an audiocraft checkpoint ({LM_FILE}, {COMPRESSION_FILE}: torch pickles); Harmonia "
            f"loads it only when its params.yaml entry says 'allow_pickle: true'. Add that if you trust the files."
        )
    spec, path, inventory = open_snapshot(wb, name, engine, allow_pickle=True)
    pickled = sorted(f.path for f in inventory.files if f.path.endswith(PICKLED))
    return spec, path, inventory, pickled


def _check_family(facts: ModelFacts, cls, name: str) -> None:
    if facts.family != cls.family:
        raise RequestError(
            f"Model '{name}' is a {facts.family} checkpoint, not {cls.family}; set its engine to {facts.family} "
            "in params.yaml."
        )
    if "description" not in facts.conditioners:
        raise RequestError(
            f"Model '{name}' has no text conditioner ('description'); Harmonia prompts with text."
        )


def _check_prompts(prompts: Any, what: str) -> None:
    if not isinstance(prompts, tuple) or not prompts:
        raise RequestError("prompts must be a non-empty list of strings: give at least one prompt.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(f"prompts[{i}] is empty: describe the {what} in a few words.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompts[{i}] has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")


class AudioGenEngine(_AudiocraftEngine):
    """AudioGen (text to sound): one-shots, loops at a tempo and sound effects, shaped as Stable Audio's are.

    Example:
        >>> engine = AudioGenEngine.load(Workbench.open(), "tiny-audiogen")  # doctest: +SKIP
        >>> engine.generate(SampleRequest("dog barking", type="sfx", duration_s=2, seed=0)).sample_rate  # doctest: +SKIP
        16000
    """

    name: ClassVar[str] = "audiogen"
    family: ClassVar[str] = "audiogen"
    kind: ClassVar[str] = "sample"
    request_type: ClassVar[type] = SampleRequest

    @classmethod
    def check(cls, request: SampleRequest, snapshot: Path) -> SampleRequest:
        """Every check that needs no model: the Stable Audio engine's (type, lengths, loop grid), and
        what AudioGen does not take (a negative prompt, an init clip). ``steps`` (denoising) does not
        apply and is recorded as None.
        """
        facts = model_facts(snapshot, True)
        if request.negative_prompt is not None:
            raise RequestError("negative_prompt: audiogen has no negative prompt; leave --negative out.")
        if request.init is not None:
            raise RequestError("init: audiogen makes no variations of a clip; leave --init out.")
        _check_prompts(request.prompts, "sound")
        longest = max(MAX_AUDIOGEN_S, facts.segment_s)
        checked = check_sample_request(
            replace(request, steps=None), facts.sample_rate, longest, snapshot.name
        )
        if facts.segment_s <= EXTEND_STRIDE_S and generated_seconds(checked) > facts.segment_s:
            raise RequestError(
                f"model '{snapshot.name}' has a {facts.segment_s:g} s window, too short to extend; ask for at most "
                f"{facts.segment_s:g} s."
            )
        return checked

    def generate(
        self, request: SampleRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> AudiocraftResult:
        """One float32 take ``[channels, samples]`` per prompt and take index (take i from seed + i)."""
        with TORCH_LOCK:
            # 1. Check; fix the seed and the length to generate.
            request = type(self).check(request, self.loaded.path)
            seconds = generated_seconds(request)
            runs = [(p, k) for p in range(len(request.prompts)) for k in range(request.takes)]
            takes = [{"prompt": request.prompts[p], "seed": request.seed + k} for p, k in runs]
            params = {"top_k": min(250, self.facts.card), "top_p": 0.0, "temperature": 1.0, "cfg_coef": float(request.guidance_scale),
                      "extend_stride": EXTEND_STRIDE_S}  # fmt: skip
            # 2. Generate in the worker (the token steps of every window), shape by type.
            audio, steps, generate_s = self._run(
                takes, seconds, params, _audiogen_steps(seconds, self.facts), progress, cancel
            )
            shaped, details = [], []
            for (p, k), raw in zip(runs, audio, strict=True):
                clip, facts = shape_take(raw, self.sample_rate, request, seconds)
                shaped.append(clip)
                details.append(
                    {"prompt": p, "take": k, "seed": request.seed + k, "samples": int(clip.shape[1]), **facts}
                )
        return AudiocraftResult(
            audio=tuple(shaped),
            prompts=tuple(request.prompts[p] for p, _ in runs),
            sample_rate=self.sample_rate,
            request=request,
            steps=steps,
            generate_s=generate_s,
            generated_s=seconds,
            take_details=tuple(details),
        )


def _audiogen_steps(seconds: float, facts: ModelFacts) -> int:
    """The LM's steps per take, window by window as audiocraft's genmodel extends (an estimate for progress)."""
    frames, window = int(seconds * facts.frame_rate), int(facts.segment_s * facts.frame_rate)
    stride = int(EXTEND_STRIDE_S * facts.frame_rate)
    steps, offset, prompt = 0, 0, 0
    while offset + prompt < frames:
        chunk = min(frames - offset, window)
        steps += chunk - prompt + facts.n_q - 1
        if frames <= window:
            break
        prompt, offset = chunk - stride, offset + stride
    return steps


class MagnetEngine(_AudiocraftEngine):
    """MAGNeT (text to music, masked non-autoregressive decoding): clips up to the model's window.

    The request's sampling settings map onto MAGNeT's: ``temperature`` (MAGNeT's default is 3.0),
    ``top_k`` and ``top_p`` (its defaults 0 and 0.9), ``guidance_scale`` as the starting guidance,
    annealed to 1.0 (its default starts at 10.0). Each prompt runs from the request's seed.

    Example:
        >>> engine = MagnetEngine.load(Workbench.open(), "tiny-magnet")  # doctest: +SKIP
        >>> engine.generate(MusicRequest("calm piano", duration_s=1, seed=0)).sample_rate  # doctest: +SKIP
        32000
    """

    name: ClassVar[str] = "magnet"
    family: ClassVar[str] = "magnet"
    kind: ClassVar[str] = "music"
    request_type: ClassVar[type] = MusicRequest

    @classmethod
    def check(cls, request: MusicRequest, snapshot: Path) -> MusicRequest:
        """Every check that needs no model; returns the request with its seed."""
        facts = model_facts(snapshot, True)
        _check_prompts(request.prompts, "music")
        check_limits(request)
        check_decoder(request, "magnet", ("encodec", "mbd"))
        for role, flag in (("melody", "--melody"), ("continuation", "--continue")):
            if getattr(request, role) is not None:
                raise RequestError(
                    f"{role}: magnet takes no {role}; leave {flag} out (musicgen models take it)."
                )
        if request.extend_stride_s is not None:
            raise RequestError("extend_stride_s: magnet makes one window, no long form; leave --stride out.")
        if request.duration_s > facts.segment_s:
            raise RequestError(
                f"duration_s is {request.duration_s:g} s but model '{snapshot.name}' makes at most "
                f"{facts.segment_s:g} s (MAGNeT decodes one fixed window); ask for at most {facts.segment_s:g} s."
            )
        if request.duration_s * facts.frame_rate < 1:
            raise RequestError(
                f"duration_s is {request.duration_s:g} s, shorter than one frame ({1 / facts.frame_rate:g} s)."
            )
        seed = choose_seed() if request.seed is None else check_seed(request.seed)
        return replace(request, seed=seed, duration_s=float(request.duration_s))

    def generate(
        self, request: MusicRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> AudiocraftResult:
        """One float32 take ``[channels, samples]`` per prompt, exactly ``duration_s`` long (or the frames made)."""
        with TORCH_LOCK:
            request = type(self).check(request, self.loaded.path)
            takes = [{"prompt": p, "seed": request.seed} for p in request.prompts]
            params = {
                "use_sampling": True, "temperature": float(request.temperature),
                "top_k": min(int(request.top_k), self.facts.card),  # above the codebook size: every token
                "top_p": float(request.top_p) if request.top_p < 1.0 else 0.0,
                "max_cfg_coef": float(request.guidance_scale), "min_cfg_coef": 1.0,
                "decoding_steps": list(MAGNET_DECODING_STEPS[: self.facts.n_q])
                + [MAGNET_DECODING_STEPS[-1]] * max(0, self.facts.n_q - len(MAGNET_DECODING_STEPS)),
            }  # fmt: skip
            steps_per_take = sum(params["decoding_steps"])
            decoder = {"name": "encodec"}
            if request.decoder == "mbd":  # the same tokens, decoded by diffusion: its steps count too
                mbd = self._ensure_mbd()
                steps_per_take += mbd.facts["n_bands"] * mbd.facts["steps_per_band"]
                decoder = {"name": "mbd", **mbd.record(), "full_unpickling": bool(self.worker.mbd_used)}
            # MAGNeT rounds its length down to whole spans: ask for a few frames more (within its
            # window) and cut to exactly duration_s
            asked = min(self.facts.segment_s, request.duration_s + 4 / self.facts.frame_rate)
            audio, steps, generate_s = self._run(
                takes, asked, params, steps_per_take, progress, cancel, request.decoder
            )
            length = round(request.duration_s * self.sample_rate)
            audio = [a[:, :length].copy() for a in audio]
            details = [
                {"prompt": i, "seed": request.seed, "samples": int(a.shape[1])} for i, a in enumerate(audio)
            ]
        return AudiocraftResult(
            audio=tuple(audio),
            prompts=tuple(request.prompts),
            sample_rate=self.sample_rate,
            request=request,
            steps=steps,
            generate_s=generate_s,
            generated_s=request.duration_s,
            take_details=tuple(details),
            decoder=decoder,
        )

    def _ensure_mbd(self) -> Companion:
        """The model's MBD, verified and loaded in the worker over this model's compression model."""
        mbd = _mbd(self.wb, self.loaded.spec, self.facts)
        worker = self._ensure()
        key = (str(mbd.path), mbd.inventory.digest)
        if worker.mbd != key:
            answer = worker.call(
                "load_mbd", snapshot=str(mbd.path), allow_pickle=True, threads=self.loaded.threads
            )
            worker.mbd, worker.mbd_used = key, bool(answer.get("pickle_used"))
        return mbd


__all__ = [
    "AUDIOCRAFT_VERSION",
    "WORKER_PINS",
    "AudioGenEngine",
    "MagnetEngine",
    "Worker",
    "WorkerError",
    "ensure_worker_env",
    "model_facts",
    "shutdown",
    "worker_environment",
    "worker_venv",
]
