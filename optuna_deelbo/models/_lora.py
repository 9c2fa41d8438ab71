"""LoRA adapters (``peft``, extra ``[peft]``) on a Hugging Face sequence classifier, for DE-ELBo fine-tuning.

:func:`with_lora` wraps an ``AutoModelForSequenceClassification`` model (BERT-style encoder) in a
``peft`` LoRA model: rank-``r`` adapters on every attention and MLP projection of the encoder layers
(query, key, value, attention output, intermediate, output), the classifier trained whole
(``modules_to_save``), everything else frozen. A :class:`~optuna_deelbo.bayes.DEELBo` over it covers
the trainable parameters only (it takes ``requires_grad`` ones): the adapters in the body, the
classifier as the head (:func:`lora_head_prefix`). L2-SP's mean is then the adapters' initial values:
``lora_A``'s random init and ``lora_B``'s zeros, i.e. the update ``B A`` pulled towards 0, the
pretrained model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from optuna_deelbo._errors import ConfigError, MissingDependency
from optuna_deelbo._validation import positive_int

__all__ = ["LORA_INIT_SIGMA", "LORA_TARGETS", "is_peft_model", "lora_head_prefix", "with_lora"]

#: The modules that get adapters (a ``peft`` regex over module names): every attention and MLP projection.
LORA_TARGETS = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)


#: The DE-ELBo's initial posterior std for adapters (the default recipe's is 1e-3). lambda* >= sigma^2, so
#: the first steps' pull on each trained weight is 1 / (init_sigma^2 D): with D = 333 k adapter and head
#: weights (MiniLM, r = 8) and 1e-3 that is a weight decay of 3, which holds adapters that start at B = 0
#: at their init (lambda stayed at sigma^2 at lr <= 0.03). Measured (benchmarks/results/lora-cpu-n*.md,
#: 2026-12-07, 3 training sets): WordNet-4 N = 400 95.2 % with 1e-2 against 91.3 % with 1e-3; N = 40
#: 87.4 against 87.7.
LORA_INIT_SIGMA = 1e-2


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is or holds a ``peft`` model (a module with a ``peft_config``)."""
    return any(hasattr(m, "peft_config") for m in model.modules())


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise MissingDependency("LoRA adapters need the peft package: pip install 'optuna-deelbo[peft]'") from exc
    return peft


def with_lora(model: nn.Module, rank: int = 8, *, alpha: float | None = None, head: str = "classifier") -> nn.Module:
    """``model`` with LoRA adapters of rank ``rank`` on :data:`LORA_TARGETS`; the head ``head`` trains whole.

    Args:
        model: a BERT-style ``...ForSequenceClassification`` model; it is changed in place (``peft``
            injects the adapters), so pass a copy to keep the original.
        rank: the adapters' rank ``r``.
        alpha: LoRA's scale numerator (the update is ``alpha / r * B A``); default ``2 r``.
        head: the attribute name of the classifier, trained whole (``modules_to_save``).

    Returns:
        The ``peft.PeftModel``; its trainable parameters are the adapters and the head.
    """
    positive_int(rank, "rank")
    if not isinstance(getattr(model, head, None), nn.Module):
        raise ConfigError(f"{type(model).__name__} has no {head!r} module to train as the head")
    peft = _peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=float(alpha) if alpha is not None else 2.0 * rank,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        modules_to_save=[head],
    )
    wrapped: nn.Module = peft.get_peft_model(model, config)
    if not any("lora_" in name for name, _ in wrapped.named_parameters()):
        raise ConfigError(f"{type(model).__name__}: no module matched the LoRA targets {LORA_TARGETS!r}")
    return wrapped


def lora_head_prefix(head: str = "classifier") -> str:
    """The parameter-name prefix of the head of a :func:`with_lora` model (the trained copy peft keeps)."""
    return f"base_model.model.{head}.modules_to_save."
