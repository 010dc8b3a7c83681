"""Every exception Harmonia raises on purpose, in one place.

Each class subclasses a built-in type (so callers can catch what they already know) and
:class:`HarmoniaError` (so the CLI can tell a user mistake from a bug). Each message names
the thing that is wrong, the value received, and says what to do next. Messages never
contain a token.
"""

from __future__ import annotations


class HarmoniaError(Exception):
    """Base of every error Harmonia raises on purpose; the CLI prints these without a traceback."""


class WorkbenchNotFoundError(HarmoniaError, FileNotFoundError):
    """No workbench root was found.

    Example message:
        No Harmonia workbench found: no params.yaml in /home/me/x or any folder above it, and
        HARMONIA_ROOT is not set. Run the command inside a workbench (a folder with params.yaml)
        or set HARMONIA_ROOT=/path/to/workbench.
    """


class ParamsError(HarmoniaError, ValueError):
    """params.yaml is malformed or declares something impossible.

    Example message:
        params.yaml: models.musicgen-small.repo must be 'owner/name', got 'musicgen'.
        Fix the entry in /work/params.yaml.
    """


class UnknownSnapshotError(HarmoniaError, LookupError):
    """A model or dataset name that params.yaml does not declare.

    Example message:
        Unknown model 'musicgen-tiny'. Known models: musicgen-melody, musicgen-small,
        tiny-musicgen. Add it under 'models:' in params.yaml or pick one of those.
    """


class SnapshotMissingError(HarmoniaError, FileNotFoundError):
    """A declared snapshot has not been fetched or built yet.

    Example message:
        Model 'musicgen-small' has no snapshot in /work/models/musicgen-small.
        Run: harmonia models fetch musicgen-small
    """


class InventoryError(HarmoniaError, ValueError):
    """An inventory.json that cannot be trusted: malformed, unknown schema, unsafe paths.

    Example message:
        /work/models/x/inventory.json: files[2].path '../etc/passwd' leaves the snapshot
        folder. The inventory is corrupt or was tampered with: fetch the snapshot again.
    """


class VerificationError(HarmoniaError, ValueError):
    """A snapshot whose files do not match its inventory.

    Example messages:
        Model 'musicgen-small' failed verification: 1 modified (model.safetensors). Run 'harmonia
        models verify --full musicgen-small' for details, then 'harmonia models fetch musicgen-small'
        to restore it.
        Model 'musicgen-small' changed on disk while it was in use (model.safetensors); nothing was
        written. Run 'harmonia models verify --full musicgen-small', then generate again.
    """


class FetchError(HarmoniaError, OSError):
    """A download from the Hugging Face hub that could not be completed.

    Nothing is left in models/ or datasets/ when this is raised.

    Example message:
        facebook/musicgen-small is gated or private and no token was sent. Put
        HF_TOKEN=... in .env (or the environment) with a token that can read it, then fetch again.
    """


class BuilderError(HarmoniaError, ValueError):
    """A tiny-model builder asked for something it cannot build.

    Example message:
        Unknown tiny builder 'musicgne'. Known builders: musicgen, musicgen-melody.
    """


class AudioError(HarmoniaError, ValueError):
    """Audio that cannot be read or used.

    Example message:
        melody: cannot read song.txt as audio (Format not recognised). Give a WAV, FLAC, OGG
        or MP3 file.
    """


class RequestError(HarmoniaError, ValueError):
    """A generation request with a parameter out of range.

    Example message:
        duration_s must be > 0 and <= 300 seconds, got -1.0. Pick a duration in that range.
    """


class Cancelled(HarmoniaError, RuntimeError):
    """A generation stopped on request (the Stop button, Ctrl-C); nothing was written.

    Example message:
        Generation cancelled at step 120 of 503; no artifact was written.
    """


class WorkerError(HarmoniaError, RuntimeError):
    """A worker process (audiocraft's engines run in one) failed, died, or its environment could not be made.

    Example message:
        The audiocraft worker exited with code 3 during 'generate'; nothing was written. Its last
        words: nothing on stderr. Run again (a new worker starts); if it repeats, run `make
        audiocraft` to remake its environment.
    """


class ArtifactError(HarmoniaError, LookupError):
    """An artifact that does not exist or whose manifest cannot be read.

    Example message:
        No artifact 'deadbeef' in /work/artifacts. Run 'harmonia artifacts list' to see the ids.
    """


class FileFormatError(HarmoniaError, ValueError):
    """A YAML or JSON file that is too big, not UTF-8, not well formed, too deeply nested, or an alias bomb.

    Example message:
        params.yaml line 3, column 5: mapping values are not allowed here. Fix the file.
    """


class RemoteCodeError(VerificationError):
    """A snapshot whose config asks to run code shipped with the model (``auto_map``); never loaded.

    Example message:
        Model 'x' cannot be loaded: config.json has the key 'auto_map', which asks to run Python
        code from the model's repo. Harmonia never runs remote code: pick a model whose
        architecture transformers or diffusers ship.
    """


class EndpointError(HarmoniaError, ConnectionError):
    """An OpenAI-compatible text server that could not be reached or did not answer properly.

    The message names the server's URL, never the key. Nothing was written.

    Example message:
        The text server at http://127.0.0.1:8000/v1 refused the connection (is it running?).
        Start it (e.g. `transformers serve`) or fix models.local-lm.endpoint in params.yaml.
        Nothing was written.
    """


class OutputError(HarmoniaError, ValueError):
    """A language model's answer that fails its task's check; no artifact was made.

    Example message:
        lyrics: the model's answer failed the check: the sections are [verse], [chorus] but the
        structure asks for verse, chorus, bridge, chorus. No artifact was made; the raw answer
        is kept in .harmonia/rejected/lyrics-3f0c8a4b2d1e.txt. Try another seed or model, or
        edit text.templates.lyrics in params.yaml.
    """


class ClusterError(HarmoniaError, RuntimeError):
    """The Ray cluster cannot run a batch as asked (checked before anything starts).

    Example message:
        ray: no node of the cluster at 10.0.0.5:6379 has 1 CPU and 1 GPU for one actor (nodes:
        16 CPU, 0 GPU). Lower batch.ray.cpus_per_actor / gpus_per_actor in params.yaml, or add a
        node that has them (ray start --address ...).
    """
