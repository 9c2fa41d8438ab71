"""Training checkpoints: what a run needs to finish exactly as if it had never stopped.

A checkpoint is one ``torch.save`` dict, read back with ``weights_only=True`` (no pickled
code): the objective's state (model weights, posterior sigma), optimizer and LR-scheduler
state, the torch / CUDA / Python / NumPy RNG states, the minibatch order and cursor, the step,
and the logs that decide the final numbers (history rows, the last epoch's losses, early
stopping and adaptive-schedule state). The prior's lambda and tau are closed-form functions of
those weights, so they need no state of their own. :func:`optuna_deelbo.train.train_model` writes
them through a :class:`CheckpointHook` and resumes from one with ``resume=``.

Where the bytes go is not this module's business: a :class:`CheckpointStore` (Optuna's artifact
store per trial, :class:`optuna_deelbo.tuning.Checkpointing`) hands out hooks and finds the state
a retried trial resumes from.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from optuna_deelbo._errors import CheckpointError
from optuna_deelbo._validation import positive_int

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointHook",
    "CheckpointStore",
    "Resume",
    "check_fingerprint",
    "copy_tensors",
    "from_bytes",
    "rng_state",
    "set_rng_state",
    "to_bytes",
]

#: Tag stored in every checkpoint; a file without it is refused.
CHECKPOINT_FORMAT = "optuna-deelbo-checkpoint/1"


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


class CheckpointStore(Protocol):
    """Where a trial's checkpoints live (``TaskSpec.checkpointing``); ``trial`` is the objective's Optuna trial."""

    @property
    def every(self) -> int:
        """Steps between two checkpoints."""

    def hook(self, trial: Any) -> CheckpointHook:
        """The hook the training loop saves ``trial``'s states through."""

    def find_resume(self, trial: Any) -> Resume | None:
        """The newest state of the trials ``trial`` retries, or ``None``; raises CheckpointError if unreadable."""
