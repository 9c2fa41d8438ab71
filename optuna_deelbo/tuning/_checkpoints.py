"""``Checkpointing``: a trial's training checkpoints in an Optuna artifact store, found again by its retry.

The store (``optuna.artifacts.FileSystemArtifactStore`` by default, so optuna-dashboard lists the
files) holds two alternating slots per trial, so a process killed while writing one still leaves
the previous one whole; the trial attr ``checkpoint:artifact_id`` names the newest. A retried
trial (Optuna's ``RetryHeartbeatStaleTrialCallback`` system attrs ``failed_trial`` /
``retry_history``) resumes from the newest checkpoint of the trials it retries. What a checkpoint
holds is :mod:`optuna_deelbo.train._checkpoint`'s business.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import CheckpointError, ConfigError
from optuna_deelbo._validation import positive_int
from optuna_deelbo.task._stored import BuiltinTask
from optuna_deelbo.train._checkpoint import CheckpointHook, Resume, from_bytes, to_bytes
from optuna_deelbo.tuning import attrs as A

__all__ = ["ArtifactStore", "Checkpointing", "default_artifacts_dir", "worker_checkpointing"]

_SLOT_NAMES = ("checkpoint-a.pt", "checkpoint-b.pt")


class ArtifactStore(Protocol):
    """What :class:`Checkpointing` needs of an ``optuna.artifacts`` store (FileSystem, Boto3, GCS, ...)."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


def default_artifacts_dir(storage_url: str) -> Path:
    """Where checkpoints go by default: ``<db>-artifacts`` next to a SQLite file, else ``./deelbo-artifacts``."""
    prefix = "sqlite:///"
    if storage_url.startswith(prefix) and storage_url[len(prefix) :] not in ("", ":memory:"):
        db = Path(storage_url[len(prefix) :])
        return (db.parent / f"{db.stem}-artifacts").resolve()
    return Path("deelbo-artifacts").resolve()


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of ``study``, read afresh from its storage (a retry's predecessor may be another worker's)."""
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise CheckpointError(f"study {study.study_name!r} has no trial {number}")
    return found[0]


class _TrialWriter:
    """Writes a trial's checkpoints into two alternating artifact slots and points the user attrs at the newest."""

    def __init__(self, trial: optuna.trial.Trial, store: ArtifactStore) -> None:
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
        self.trial.set_user_attr(A.CHECKPOINT_ARTIFACT, artifact_id)
        self.trial.set_user_attr(A.CHECKPOINT_STEP, int(state["step"]))
        self.written += 1


@dataclass(frozen=True)
class Checkpointing:
    """Checkpoint every ``every`` steps of a trial's training into an artifact store.

    Args:
        store: any ``optuna.artifacts`` store; :meth:`filesystem` builds the default one.
        every: steps between two checkpoints (> 0).
    """

    store: ArtifactStore
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

    def export_series(self, trial: optuna.trial.Trial, attrs: Mapping[str, Any]) -> list[str]:
        """Each :data:`~optuna_deelbo.tuning.attrs.SERIES` attr in ``attrs`` also as a JSON artifact of ``trial``.

        ``learned-trace.json`` / ``lambda-trajectory.json`` (the same ``[[step, ...], ...]`` rows), which
        optuna-dashboard's trial page lists for download; the trial's system attr stays the record.

        Returns:
            The artifact ids, in the order of the keys' names.
        """
        ids = []
        with tempfile.TemporaryDirectory(prefix="deelbo-series-") as tmp:
            for key in sorted(A.SERIES & attrs.keys()):
                path = Path(tmp) / f"{key.replace(':', '-')}.json"
                path.write_text(json.dumps(attrs[key]))
                ids.append(
                    upload_artifact(
                        artifact_store=self.store,
                        file_path=str(path),
                        study_or_trial=trial,
                        mimetype="application/json",
                    )
                )
        return ids

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
            artifact_id = attrs.get(A.CHECKPOINT_ARTIFACT)
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


def worker_checkpointing(builtin: BuiltinTask, artifacts: str | Path | None = None) -> Checkpointing | None:
    """The workers' checkpoint store of a planned study (``artifacts`` overrides the stored directory), or ``None``."""
    if builtin.checkpoint_every is None:
        return None
    directory = artifacts if artifacts is not None else builtin.artifacts
    assert directory is not None  # BuiltinTask.__post_init__
    return Checkpointing.filesystem(directory, every=builtin.checkpoint_every)
