"""The built-in fine-tuning tasks: embedded digits (default) and Split-CIFAR (offline CIFAR-10).

Both pretrain on a source task (timed separately: the cost is shared by every strategy),
collect SWAG moments of the body for the PTYL prior, and return a :class:`TaskSpec`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import MAX_COUNT, check_seed, positive_int, shown
from optuna_deelbo.bayes._deelbo_recipe import DEELBoRecipe, resolve_recipe
from optuna_deelbo.bayes._priors import PRIOR_NAMES
from optuna_deelbo.bayes._swag import SWAGMoments
from optuna_deelbo.data._cifar import (
    DeviceAugment,
    default_cache_dir,
    load_cifar10_jpeg,
    load_cifar10_torchvision,
    split_classes,
)
from optuna_deelbo.data._splits import Split, digits_transfer, stratified_indices
from optuna_deelbo.models._backbones import BACKBONE_NAMES, Backbone, build_backbone, load_checkpoint
from optuna_deelbo.models._small_cnn import SmallCNN, with_new_head
from optuna_deelbo.task._pretrain import pretrain
from optuna_deelbo.task._spec import TaskSpec

__all__ = ["CIFAR_DATASETS", "DATASET_NAMES", "digits_task", "split_cifar_task"]

#: Names accepted by ``optuna-deelbo compare --dataset`` (``wordnet-4``: :func:`~optuna_deelbo.task.wordnet_task`).
DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10-jpeg", "cifar10", "wordnet-4")
#: CIFAR-10 tasks (need ``data_dir``; take a backbone and a cache folder).
CIFAR_DATASETS: tuple[str, ...] = ("cifar10-jpeg", "cifar10")


#: Learning rate of Split-CIFAR source pretraining (SGD with momentum, cosine decay).
PRETRAIN_LR = 0.1
#: Part of the pretraining cache key; raised when a cached body of the same settings would differ.
#: 2: the body's random init is seeded (``build_backbone``); version-1 files held an unseeded draw,
#: a different body per pretraining process, and are not reused.
PRETRAIN_CACHE_VERSION = 2


def _check_arguments(prior: str, swag_rank: int, seed: object, **counts: object) -> None:
    """Refuse an unknown prior, ``ptyl`` without SWAG columns, a bad seed or count before any data is decoded."""
    check_seed(seed)
    for name, value in counts.items():
        positive_int(value, name)
    if prior not in PRIOR_NAMES:
        raise ConfigError(f"unknown prior {prior!r}; choose one of {PRIOR_NAMES}")
    if not isinstance(swag_rank, int) or isinstance(swag_rank, bool) or not 0 <= swag_rank <= MAX_COUNT:
        raise ConfigError(f"swag_rank must be an integer >= 0, got {shown(swag_rank)}")
    if prior == "ptyl" and swag_rank == 0:
        raise ConfigError("the ptyl prior needs SWAG moments from pretraining: pass swag_rank > 0")


def _pretrain_stem(cache: Path, backbone: str, seed: int, settings: dict[str, object]) -> Path:
    """Cache file stem for a pretrained body: readable prefix plus a hash of every setting that changes it."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache / f"split-cifar-{backbone}-steps{settings['steps']}-seed{seed}-{digest}"


def _load_pretrained(model: nn.Module, stem: Path, swag_rank: int) -> tuple[bool, SWAGMoments | None]:
    """Load a cached body into ``model`` (and its SWAG moments).

    Returns:
        ``(hit, swag)``; ``hit`` is False when the cache is absent or unreadable (then ``model``
        may be partly overwritten and must be pretrained again).
    """
    checkpoint, swag_file = stem.with_suffix(".pt"), stem.with_suffix(".swag")
    if not checkpoint.is_file() or (swag_rank > 0 and not swag_file.is_file()):
        return False, None
    try:
        load_checkpoint(model, checkpoint)
        return True, SWAGMoments.load(swag_file) if swag_rank > 0 else None
    except ConfigError as exc:
        warnings.warn(f"ignoring the pretraining cache {str(stem)!r} and pretraining again: {exc}", stacklevel=3)
        return False, None


def _save_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp_path)`` then rename, so a killed run never leaves a half-written cache file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _ptyl_fields(prior: str, swag: SWAGMoments | None) -> dict[str, object]:
    if prior != "ptyl":
        return {}
    if swag is None:
        raise ConfigError("the ptyl prior needs SWAG moments from pretraining (swag_rank > 0)")
    # unit mean variance, so the MAP baselines' weight-decay grid fits PTYL too (SWAGMoments.unit_trace_scale)
    return {"prior_mean": swag.mean, "prior_covariance": swag.covariance_factors(scale=swag.unit_trace_scale())}


def digits_task(
    n_train: int = 100,
    *,
    seed: int = 0,
    prior: str = "l2-sp",
    steps: int = 300,
    batch_size: int = 64,
    pretrain_steps: int = 400,
    swag_rank: int = 10,
    device: str | None = None,
    progress: bool = False,
    recipe: DEELBoRecipe | str = "default",
) -> tuple[TaskSpec, float]:
    """The embedded default: pretrain a :class:`SmallCNN` on digits 0-4, fine-tune on 5-9.

    SWAG moments (``swag_rank`` columns) are collected during pretraining only for ``prior="ptyl"``.
    ``recipe``: how DE-ELBo runs train and select (:class:`DEELBoRecipe` or ``"default"`` / ``"paper"``).

    Returns:
        The task and the pretraining wall-clock in seconds.
    """
    _check_arguments(
        prior, swag_rank, seed, n_train=n_train, steps=steps, batch_size=batch_size, pretrain_steps=pretrain_steps
    )
    resolve_recipe(recipe)
    data = digits_transfer(n_train, seed=seed)
    start = time.perf_counter()
    torch.manual_seed(seed)
    source_model = SmallCNN(data.n_source_classes, in_channels=int(data.source.x.shape[1]))
    done = pretrain(
        source_model,
        data.source,
        steps=pretrain_steps,
        seed=seed,
        device=device,
        swag_rank=swag_rank if prior == "ptyl" else 0,
    )
    pretrain_s = time.perf_counter() - start
    trained = done.model.cpu()
    assert isinstance(trained, SmallCNN)

    def factory() -> nn.Module:
        return with_new_head(trained, data.n_classes, seed=seed)

    task = TaskSpec(
        name=data.name,
        model_factory=factory,
        train=data.train,
        test=data.test,
        head_prefixes=("head.",),
        prior=prior,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        recipe=recipe,
        **_ptyl_fields(prior, done.swag),  # type: ignore[arg-type]
    )
    return task, pretrain_s


def _split_cifar_data(
    data_dir: str | Path, source: str, cache_dir: str | Path | None, n_train: int, seed: int
) -> tuple[Split, Split, Split]:
    """CIFAR-10 as (source classes 0-4: all training images, N stratified target images of 5-9, their test images)."""
    if source == "jpeg":
        train_x, train_y = load_cifar10_jpeg(data_dir, "train", cache_dir=cache_dir)
        test_x, test_y = load_cifar10_jpeg(data_dir, "test", cache_dir=cache_dir)
    elif source == "torchvision":
        train_x, train_y = load_cifar10_torchvision(data_dir, "train")
        test_x, test_y = load_cifar10_torchvision(data_dir, "test")
    else:
        raise ConfigError(f"unknown CIFAR-10 source {source!r}; choose 'jpeg' or 'torchvision'")
    source_split = Split(*split_classes(train_x, train_y, (0, 1, 2, 3, 4)))
    pool_x, pool_y = split_classes(train_x, train_y, (5, 6, 7, 8, 9))
    target_test = Split(*split_classes(test_x, test_y, (5, 6, 7, 8, 9)))
    idx = stratified_indices(pool_y, n_train, seed)
    return source_split, Split(pool_x[idx], pool_y[idx]), target_test


def _pretrained_backbone(
    stem: Path,
    backbone: str,
    source: Split,
    steps: int,
    batch_size: int,
    seed: int,
    swag_rank: int,
    device: str | None,
    progress: bool,
) -> tuple[Backbone, SWAGMoments | None, float]:
    """The source-pretrained backbone and its SWAG moments from the cache ``stem``, else pretrained and cached.

    Returns the backbone, the moments and the pretraining seconds (0 for a cache hit).
    """
    built = build_backbone(backbone, 5, seed=seed)
    hit, swag = _load_pretrained(built.model, stem, swag_rank)
    if hit:
        return built, swag, 0.0
    built = build_backbone(backbone, 5, seed=seed)  # a failed load may have overwritten some weights
    start = time.perf_counter()
    done = pretrain(
        built.model,
        source,
        steps=steps,
        lr=PRETRAIN_LR,
        batch_size=batch_size,
        seed=seed,
        device=device,
        head_prefixes=built.head_prefixes,
        transform=DeviceAugment(train=True),
        swag_rank=swag_rank,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    state = {k: v.cpu() for k, v in built.model.state_dict().items()}
    if done.swag is not None:
        _save_atomic(stem.with_suffix(".swag"), done.swag.save)
    _save_atomic(stem.with_suffix(".pt"), lambda tmp: torch.save(state, tmp))
    return built, done.swag, seconds


def split_cifar_task(
    n_train: int = 50,
    *,
    data_dir: str | Path,
    source: str = "jpeg",
    backbone: str = "cifar-resnet20",
    seed: int = 0,
    pretrain_seed: int = 0,
    prior: str = "l2-sp",
    steps: int = 300,
    batch_size: int = 64,
    pretrain_steps: int = 2000,
    pretrain_batch_size: int = 128,
    swag_rank: int = 20,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = False,
    recipe: DEELBoRecipe | str = "default",
) -> tuple[TaskSpec, float]:
    """Split-CIFAR, the offline stand-in for ImageNet pretraining.

    Pretrain ``backbone`` on CIFAR-10 classes 0-4 (airplane ... deer; all 25,000 training
    images), then fine-tune on classes 5-9 (dog ... truck) with a stratified training set of
    ``n_train`` images; test on the 5,000 test images of classes 5-9. The pretrained body and
    its SWAG moments are cached in ``cache_dir`` under a key of every pretraining setting
    (backbone, source, steps, batch size, learning rate, SWAG rank, seed), so every N, prior and
    strategy reuses them; a cache hit reports 0 s of pretraining. Cache files are written
    atomically; an unreadable one is ignored (with a warning) and rebuilt.

    Args:
        data_dir: folder with ``cifar10-{train,test}-jpeg.tar.xz`` (``source="jpeg"``), or
            torchvision's CIFAR-10 root (``source="torchvision"``, no download).
        seed: draws the N training images and seeds the new head and training.
        pretrain_seed: seeds source pretraining; fixed across ``seed`` by default, as one
            published checkpoint is shared by every fine-tuning run.
        recipe: how DE-ELBo runs train and select (see :func:`digits_task`).
    """
    if backbone not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {BACKBONE_NAMES}")
    _check_arguments(
        prior,
        swag_rank,
        seed,
        n_train=n_train,
        steps=steps,
        batch_size=batch_size,
        pretrain_steps=pretrain_steps,
        pretrain_batch_size=pretrain_batch_size,
    )
    check_seed(pretrain_seed, "pretrain_seed")
    resolve_recipe(recipe)
    source_split, target_train, target_test = _split_cifar_data(data_dir, source, cache_dir, n_train, seed)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "backbone": backbone,
        "source": source,
        "steps": pretrain_steps,
        "batch_size": pretrain_batch_size,
        "lr": PRETRAIN_LR,
        "swag_rank": swag_rank,
        "seed": pretrain_seed,
        "classes": [0, 1, 2, 3, 4],
        "version": PRETRAIN_CACHE_VERSION,
    }
    stem = _pretrain_stem(cache, backbone, pretrain_seed, settings)
    built, swag, pretrain_s = _pretrained_backbone(
        stem, backbone, source_split, pretrain_steps, pretrain_batch_size, pretrain_seed, swag_rank, device, progress
    )
    source_model = built.model.cpu()

    def factory() -> nn.Module:
        import copy

        model = copy.deepcopy(source_model)
        built.replace_head(model, 5, seed)
        return model

    task = TaskSpec(
        name=f"split-cifar-{backbone}-N{n_train}-seed{seed}",
        model_factory=factory,
        train=target_train,
        test=target_test,
        head_prefixes=built.head_prefixes,
        prior=prior,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        train_transform=DeviceAugment(train=True),
        eval_transform=DeviceAugment(train=False),
        recipe=recipe,
        **_ptyl_fields(prior, swag),  # type: ignore[arg-type]
    )
    return task, pretrain_s
