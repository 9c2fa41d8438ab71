"""``BuiltinTask``: the few JSON values that rebuild a built-in task (digits, Split-CIFAR) in another process.

A planner stores it as the study user attr ``task_recipe`` (:data:`~optuna_deelbo.tuning.attrs.TASK_ATTR`; the
key keeps its first name so that studies planned by 0.2 still load); every ``optuna-deelbo worker`` rebuilds the
same :class:`~optuna_deelbo.task.TaskSpec` from it (the source pretraining is seeded, so every worker gets the
same pretrained weights on the same device type and thread count). ``optuna-deelbo compare`` builds its task from
one too. (A *recipe* in this package is how DE-ELBo trains: :class:`~optuna_deelbo.bayes.DEELBoRecipe`, the
``deelbo`` field here.)"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_int
from optuna_deelbo.bayes._deelbo_recipe import DEELBoRecipe
from optuna_deelbo.bayes._priors import PRIOR_NAMES
from optuna_deelbo.data._text import WORDNET_DIR
from optuna_deelbo.models._backbones import BACKBONE_NAMES
from optuna_deelbo.task._builtin import CIFAR_DATASETS, DATASET_NAMES, digits_task, split_cifar_task
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.task._text import wordnet_task

__all__ = ["BUILTIN_TASK_VERSION", "FACTORIES", "BuiltinTask", "dataset_defaults"]

#: Stored as ``"version"``; a task of another version is refused.
BUILTIN_TASK_VERSION = 1
#: Each dataset's factory. Its signature's defaults are the dataset's defaults (N, steps, batch size, source
#: pretraining steps, CIFAR backbone): the one place they are written; :class:`BuiltinTask` and the CLI read them.
FACTORIES: dict[str, Callable[..., tuple[TaskSpec, float]]] = {
    "digits": digits_task,
    "cifar10-jpeg": split_cifar_task,
    "cifar10": split_cifar_task,
    "wordnet-4": wordnet_task,
}
#: The settings a built-in task defaults per dataset, in the order the CLI's help lists them.
_DEFAULTED = ("n_train", "steps", "batch_size", "pretrain_steps", "backbone")


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """``{setting: default}`` of one dataset's factory, for those of ``n_train``, ``steps``, ``batch_size``,
    ``pretrain_steps``, ``backbone`` it takes (digits and wordnet-4 have no backbone, wordnet-4 no pretraining).

    Raises:
        ConfigError: an unknown dataset.
    """
    if dataset not in FACTORIES:
        raise ConfigError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASET_NAMES)}")
    params = inspect.signature(FACTORIES[dataset]).parameters
    return {name: params[name].default for name in _DEFAULTED if name in params}


@dataclass(frozen=True)
class BuiltinTask:
    """How to build a built-in task (see ``optuna-deelbo compare --help`` for each setting).

    Attributes:
        dataset: one of ``DATASET_NAMES`` (``"digits"`` is embedded; CIFAR needs ``data_dir``;
            ``"wordnet-4"`` needs Debian's ``wordnet-base`` and the ``[text]`` extra).
        n_train: target training-set size N; ``None`` = the dataset's default (its factory's:
            digits 100, CIFAR 50, wordnet-4 40), resolved when the task is built.
        seed: as in :func:`~optuna_deelbo.task.digits_task`.
        prior: as in :func:`~optuna_deelbo.task.digits_task`.
        steps: SGD steps per configuration; ``None`` = the dataset's default (digits and CIFAR 300,
            wordnet-4 150), set at construction.
        batch_size: ``None`` = the dataset's default (64, wordnet-4 16), set at construction.
        pretrain_steps: source pretraining steps; ``None`` = digits 400, CIFAR 2000, resolved when built.
        data_dir: CIFAR: the archives' folder; wordnet-4: the WordNet folder (default /usr/share/wordnet).
        backbone: CIFAR tasks only; ``None`` = :func:`~optuna_deelbo.task.split_cifar_task`'s (stored for
            every dataset, as 0.3 did).
        cache_dir: CIFAR tasks only.
        checkpoint_every: steps between two checkpoints of a worker's trial (``None`` = none).
        artifacts: the checkpoint directory every worker shares (a worker may override it
            with ``--artifacts`` when the same store is mounted elsewhere).
        deelbo: the DE-ELBo recipe: a name from ``RECIPES`` or a :meth:`DEELBoRecipe.to_json` dict.
    """

    dataset: str = "digits"
    n_train: int | None = None
    seed: int = 0
    prior: str = "l2-sp"
    steps: int | None = None
    batch_size: int | None = None
    pretrain_steps: int | None = None
    data_dir: str | None = None
    backbone: str | None = None
    cache_dir: str | None = None
    checkpoint_every: int | None = None
    artifacts: str | None = None
    deelbo: str | dict[str, Any] = "default"

    def __post_init__(self) -> None:
        DEELBoRecipe.from_json(self.deelbo)  # checked here, before any pretraining
        defaults = dataset_defaults(self.dataset)
        for name in ("steps", "batch_size"):  # concrete in the stored JSON, as 0.3 stored them
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        if self.backbone is None:
            object.__setattr__(self, "backbone", dataset_defaults("cifar10-jpeg")["backbone"])
        if self.prior not in PRIOR_NAMES:
            raise ConfigError(f"unknown prior {self.prior!r}; choose one of {PRIOR_NAMES}")
        if self.backbone not in BACKBONE_NAMES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONE_NAMES}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("n_train", "pretrain_steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None:
                positive_int(value, name)
        positive_int(self.steps, "steps")
        positive_int(self.batch_size, "batch_size")
        if self.dataset in CIFAR_DATASETS and self.data_dir is None:
            raise ConfigError(
                f"dataset {self.dataset} needs data_dir (--data-dir; e.g. ../shared/data for cifar10-jpeg)"
            )
        if self.checkpoint_every is not None and self.artifacts is None:
            raise ConfigError("checkpoint_every needs an artifacts directory for the checkpoints")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``"version"``) that :meth:`from_json` reads back."""
        return {"version": BUILTIN_TASK_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: object) -> BuiltinTask:
        """Read :meth:`to_json`'s dict.

        Raises:
            ConfigError: not a dict, another version, an unknown key or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a stored built-in task must be a JSON object, got {type(data).__name__}")
        fields = dict(data)
        version = fields.pop("version", None)
        if version != BUILTIN_TASK_VERSION:
            raise ConfigError(
                f"stored built-in task version {version!r} is not supported (expected {BUILTIN_TASK_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"stored built-in task has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**fields)

    def build(self, device: str | None = None, *, progress: bool = False) -> tuple[TaskSpec, float]:
        """Pretrain on the source task and return the target task and the pretraining seconds.

        The task carries no checkpointing; a worker adds :func:`~optuna_deelbo.tuning.workers.worker_checkpointing`.
        """
        defaults = dataset_defaults(self.dataset)
        n_train = defaults["n_train"] if self.n_train is None else self.n_train
        common: dict[str, Any] = {
            "seed": self.seed,
            "prior": self.prior,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "device": device,
            "recipe": DEELBoRecipe.from_json(self.deelbo),
        }
        if self.dataset == "digits":
            return digits_task(n_train, pretrain_steps=self.pretrain_steps or defaults["pretrain_steps"], **common)
        if self.dataset == "wordnet-4":
            return wordnet_task(
                n_train,
                progress=progress,
                wordnet_dir=WORDNET_DIR if self.data_dir is None else self.data_dir,
                **common,
            )
        assert self.data_dir is not None and self.backbone is not None  # __post_init__
        return split_cifar_task(
            n_train,
            data_dir=self.data_dir,
            source="jpeg" if self.dataset == "cifar10-jpeg" else "torchvision",
            backbone=self.backbone,
            pretrain_steps=self.pretrain_steps or defaults["pretrain_steps"],
            cache_dir=self.cache_dir,
            progress=progress,
            **common,
        )
