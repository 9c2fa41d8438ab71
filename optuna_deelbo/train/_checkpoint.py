"""Training checkpoints: what a run needs to finish exactly as if it had never stopped.

A checkpoint is one ``torch.save`` dict, read back with ``weights_only=True`` (no pickled
code): the objective's state (model weights, posterior sigma), optimizer and LR-scheduler
state, the torch / CUDA / Python / NumPy RNG states, the minibatch order and cursor, the step,
and the logs that decide the final numbers (history rows, the last epoch's losses, early
stopping and adaptive-schedule state). The prior's lambda and tau are closed-form functions of
those weights, so they need no state of their own. :func:`optuna_deelbo.train.train` writes
them through a :class:`CheckpointHook` and resumes from one with ``resume=``.

:class:`Checkpointing` keeps them per Optuna trial in an artifact store
(``optuna.artifacts.FileSystemArtifactStore`` by default, so optuna-dashboard lists them) in
two alternating slots, so a process killed while writing one still leaves the previous one
whole. A retried trial (Optuna's ``RetryHeartbeatStaleTrialCallback`` system attrs
``failed_trial`` / ``retry_history``) resumes from the newest checkpoint of the trials it retries.

Trial user attrs written (see the README):

* ``checkpoint:artifact_id`` (str), ``checkpoint:step`` (int): the newest checkpoint of this
  configuration (a retry carries its predecessor's until it writes its own)
* ``resumed_from_step`` (int, 0 = started from scratch), ``resumed_from_trial`` (int),
  ``resumed_from_artifact`` (str): where a retry picked up
* ``checkpoint:resume_error`` (str): why a checkpoint could not be used (the run restarted at step 0)
"""

from __future__ import annotations

import io
import random
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import CheckpointError, ConfigError
from optuna_deelbo._validation import positive_int

__all__ = [
    "ATTR_ARTIFACT",
    "ATTR_RESUMED_ARTIFACT",
    "ATTR_RESUMED_STEP",
    "ATTR_RESUMED_TRIAL",
    "ATTR_RESUME_ERROR",
    "ATTR_STEP",
    "CHECKPOINT_FORMAT",
    "CheckpointHook",
    "Checkpointing",
    "Resume",
    "check_fingerprint",
    "copy_tensors",
    "default_artifacts_dir",
    "from_bytes",
    "rng_state",
    "set_rng_state",
    "to_bytes",
]

#: Tag stored in every checkpoint; a file without it is refused.
CHECKPOINT_FORMAT = "optuna-deelbo-checkpoint/1"
ATTR_ARTIFACT = "checkpoint:artifact_id"
ATTR_STEP = "checkpoint:step"
ATTR_RESUMED_STEP = "resumed_from_step"
ATTR_RESUMED_TRIAL = "resumed_from_trial"
ATTR_RESUMED_ARTIFACT = "resumed_from_artifact"
ATTR_RESUME_ERROR = "checkpoint:resume_error"
_SLOT_NAMES = ("checkpoint-a.pt", "checkpoint-b.pt")


@dataclass(frozen=True)
class CheckpointHook:
    """Where the training loop sends its state: ``save(state)`` after every ``every``-th step.

    The last step never checkpoints (the run is finishing), nor does a step that stops early.
    """

    every: int
    save: Callable[[dict[str, Any]], None]

    def __post_init__(self) -> None:
        positive_int(self.every, "checkpoint interval (steps)")


def copy_tensors(value: Any, device: torch.device | str) -> Any:
    """A copy of ``value`` (a state_dict, possibly with nested dicts such as a module's extra state)
    with every tensor detached and copied to ``device``; other values are kept as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, Mapping):
        return {k: copy_tensors(v, device) for k, v in value.items()}
    return value


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch CPU (and ``device``'s CUDA), Python and NumPy global RNG states, as plain tensors and lists."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), np_pos, np_has_gauss, np_gauss],
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def to_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialise a training state (tensors moved to the CPU by ``torch.save``'s caller) with the format tag."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    return buffer.getvalue()


def _load_failure(exc: BaseException) -> str:
    """The useful part of a ``torch.load`` error: its unpickler reason, not the weights_only advice around it."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    if not text:
        return f"{type(exc).__name__} (no data)" if isinstance(exc, EOFError) else type(exc).__name__
    return text.splitlines()[0].split(". ")[0]


def from_bytes(data: bytes, *, source: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`to_bytes`.

    Raises:
        CheckpointError: truncated, corrupt, not a checkpoint, or from another format version;
            the message names ``source``.
    """
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad bytes
        raise CheckpointError(
            f"checkpoint {source} is unreadable ({len(data)} bytes; corrupt, truncated or not written by "
            f"torch.save): {_load_failure(exc)}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {source} is not an {CHECKPOINT_FORMAT} file (found {found!r})")
    return state


def check_fingerprint(state: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another run (other learning rate, budget, seed, objective or model).

    Raises:
        CheckpointError: the stored fingerprint differs; the message lists the differing keys.
    """
    stored = state.get("fingerprint", {})
    differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    if differ:
        details = ", ".join(f"{k}: {stored.get(k)!r} != {expected.get(k)!r}" for k in differ)
        raise CheckpointError(f"checkpoint belongs to another run ({details})")


def default_artifacts_dir(storage_url: str) -> Path:
    """Where checkpoints go by default: ``<db>-artifacts`` next to a SQLite file, else ``./deelbo-artifacts``."""
    prefix = "sqlite:///"
    if storage_url.startswith(prefix) and storage_url[len(prefix) :] not in ("", ":memory:"):
        db = Path(storage_url[len(prefix) :])
        return (db.parent / f"{db.stem}-artifacts").resolve()
    return Path("deelbo-artifacts").resolve()


@dataclass(frozen=True)
class Resume:
    """A checkpoint found for a retried trial: its state, artifact id and the trial that wrote it."""

    state: dict[str, Any]
    artifact_id: str
    trial_number: int

    @property
    def step(self) -> int:
        """The last optimiser step the checkpoint had completed."""
        return int(self.state["step"])


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    return storage.get_trial(trial_id)


class _TrialWriter:
    """Writes a trial's checkpoints into two alternating artifact slots and points the user attrs at the newest."""

    def __init__(self, trial: optuna.trial.Trial, store: optuna.artifacts._protocol.ArtifactStore) -> None:
        self.trial = trial
        self.store = store
        self.slots: list[str | None] = [None, None]
        self.written = 0

    def __call__(self, state: dict[str, Any]) -> None:
        slot = self.written % 2
        data = to_bytes(state)
        artifact_id = self.slots[slot]
        if artifact_id is None:
            with tempfile.TemporaryDirectory(prefix="deelbo-ckpt-") as tmp:
                path = Path(tmp) / _SLOT_NAMES[slot]
                path.write_bytes(data)
                artifact_id = upload_artifact(
                    artifact_store=self.store,
                    file_path=str(path),
                    study_or_trial=self.trial,
                    mimetype="application/octet-stream",
                )
            self.slots[slot] = artifact_id
        else:
            self.store.write(artifact_id, io.BytesIO(data))
        # Only now, with the bytes fully written, does the trial point at this slot.
        self.trial.set_user_attr(ATTR_ARTIFACT, artifact_id)
        self.trial.set_user_attr(ATTR_STEP, int(state["step"]))
        self.written += 1


@dataclass(frozen=True)
class Checkpointing:
    """Checkpoint every ``every`` steps of a trial's training into an artifact store.

    Args:
        store: any ``optuna.artifacts`` store; :meth:`filesystem` builds the default one.
        every: steps between two checkpoints (> 0).
    """

    store: optuna.artifacts._protocol.ArtifactStore
    every: int = 50

    def __post_init__(self) -> None:
        positive_int(self.every, "checkpoint interval (steps)")

    @classmethod
    def filesystem(cls, directory: str | Path, every: int = 50) -> Checkpointing:
        """A :class:`FileSystemArtifactStore` in ``directory`` (created if missing)."""
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the artifact directory {str(path)!r}: {exc}") from exc
        return cls(FileSystemArtifactStore(path), every)

    def hook(self, trial: optuna.trial.Trial) -> CheckpointHook:
        """The hook that stores ``trial``'s checkpoints (two slots, newest named by ``checkpoint:artifact_id``)."""
        return CheckpointHook(self.every, _TrialWriter(trial, self.store))

    def find_resume(self, trial: optuna.trial.Trial) -> Resume | None:
        """The newest checkpoint of the trials ``trial`` retries, or ``None`` for a fresh trial.

        Walks Optuna's ``retry_history`` (newest first) to the first trial that wrote one.

        Raises:
            CheckpointError: the checkpoint named by that trial is missing or unreadable.
        """
        system_attrs = _frozen(trial.study, trial.number).system_attrs
        history = list(system_attrs.get("retry_history") or [])
        if not history and "failed_trial" in system_attrs:
            history = [system_attrs["failed_trial"]]
        for number in reversed(history):
            attrs = _frozen(trial.study, int(number)).user_attrs
            artifact_id = attrs.get(ATTR_ARTIFACT)
            if artifact_id is None:
                continue
            try:
                with self.store.open_reader(artifact_id) as reader:
                    data = reader.read()
            except Exception as exc:  # ArtifactNotFound, OSError, a remote store's errors
                raise CheckpointError(f"checkpoint {artifact_id} of trial {number} cannot be read: {exc}") from exc
            state = from_bytes(data, source=f"{artifact_id} of trial {number}")
            return Resume(state=state, artifact_id=str(artifact_id), trial_number=int(number))
        return None

    def resume_or_restart(self, trial: optuna.trial.Trial) -> Resume | None:
        """:meth:`find_resume`, but an unusable checkpoint only warns (the run restarts at step 0).

        A worker fleet must not stall on one damaged file: the retry trains from scratch, which
        costs time but gives the same result; the reason is kept as ``checkpoint:resume_error``.
        """
        try:
            return self.find_resume(trial)
        except CheckpointError as exc:
            warnings.warn(f"trial {trial.number}: restarting from step 0: {exc}", RuntimeWarning, stacklevel=2)
            trial.set_user_attr(ATTR_RESUME_ERROR, str(exc))
            return None
