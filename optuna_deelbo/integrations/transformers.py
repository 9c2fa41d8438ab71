"""``DEELBoTrainer``: DE-ELBo inside the Hugging Face ``transformers.Trainer`` (extra ``[transformers]``).

A drop-in subclass: the model, data, collator and ``TrainingArguments`` stay as they are::

    trainer = DEELBoTrainer(model=model, args=TrainingArguments(..., weight_decay=0.0), train_dataset=train)
    trainer.train()                      # NLL + KL / (kappa N), lambda and tau in closed form every step
    trainer.deelbo.learned_values()      # {"lambda": ..., "tau": ..., "sigma": ..., "weight_decay": ...}

What it changes, and nothing else:

* the training loss is the Trainer's own (the model's NLL, label smoothing or ``compute_loss_func``
  included) under one posterior draw of the weights, plus ``KL / (kappa N)`` from the same
  :class:`~optuna_deelbo.bayes.DEELBo` that every other entry point uses; evaluation and
  prediction use the mean weights (the model as it is);
* the posterior std joins the Trainer's optimizer (one more parameter group, under its schedule),
  or, with ``sigma_lr``, trains in an Adam of its own stepped after each of the optimizer's steps
  (for a learning-rate-free optimizer such as Prodigy, which must not hold it);
  the Trainer's ``weight_decay`` must be 0 (the KL is the weight decay): a non-zero value is
  refused, except the placeholder that :class:`~optuna_deelbo.DEELBoSampler` hands
  ``hyperparameter_search``, which is replaced by 0;
* gradient accumulation gives the same step as one batch of all the micro-batches, the KL added once
  (the model's loss is taken per micro-batch as its mean; a ``compute_loss_func`` normalised by
  ``num_items_in_batch`` keeps its own scaling); mixed precision computes the KL in float32; ``save_model`` and every
  checkpoint hold the mean weights as ``save_pretrained`` writes them (``from_pretrained`` loads them)
  and the posterior std and prior in ``deelbo_state.pt``, which ``train(resume_from_checkpoint=...)``
  restores;
* several processes (torchrun / accelerate launch: DDP): the posterior std's gradients averaged over
  the ranks before each step (DDP averages the weights'), rho broadcast from rank 0, the score and the
  BatchNorm pass over the whole training set on every rank, only rank 0 reporting to Optuna;
  DataParallel, FSDP and DeepSpeed are refused;
* after training: BatchNorm statistics recomputed for the mean weights (models that have any), the
  selection score (the final DE-ELBo over the whole training set, :meth:`DEELBo.selection_score`)
  computed and used as the objective of ``hyperparameter_search`` (no validation set needed), the
  learned values written to the logs (``deelbo/lambda``, ...) and to the Optuna trial as ``learned:*``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError, MissingDependency
from optuna_deelbo._validation import learning_rate
from optuna_deelbo.bayes._batchnorm import batchnorm_layers
from optuna_deelbo.bayes._deelbo import DEELBo
from optuna_deelbo.bayes._priors import GaussianPrior
from optuna_deelbo.bayes._wiring import SigmaAdam, learned_step_name
from optuna_deelbo.models._lora import LORA_INIT_SIGMA, is_peft_model
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._sampler import learned_names, report_learned

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        "optuna_deelbo.integrations.transformers needs the transformers package: "
        "pip install 'optuna-deelbo[transformers]'"
    ) from exc

__all__ = ["DEELBO_STATE_NAME", "SIGMA_ADAM_STATE_NAME", "DEELBoTrainer", "default_head"]

#: The file beside a checkpoint's weights that holds the posterior std and the priors.
DEELBO_STATE_NAME = "deelbo_state.pt"
#: The file beside it that holds the posterior std's own Adam (``sigma_lr``).
SIGMA_ADAM_STATE_NAME = "deelbo_sigma_adam.pt"
#: Attribute names of a new task head in ``transformers``' ``...For<Task>`` models.
_HEAD_NAMES = ("classifier", "score", "qa_outputs")
#: The folder under ``output_dir`` where ``keep_best=True`` keeps the best trial's model.
BEST_TRIAL_DIR = "best-trial"


def _clear_grads(params: Sequence[Tensor]) -> None:
    """``zero_grad(set_to_none=True)`` for parameters outside the model (the posterior std)."""
    for p in params:
        p.grad = None


def _distributed() -> bool:
    """Several processes of one run (torchrun / accelerate launch: DDP)."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


def _average_across_ranks(params: Sequence[Tensor]) -> None:
    """Mean of each parameter's gradient over the ranks (DDP averages the model's; the posterior std is not in it)."""
    world = torch.distributed.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # every rank joins every all_reduce
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def _refuse_a_frozen_peft_head(model: nn.Module, head: Sequence[str]) -> None:
    """A ``peft`` model whose new head trains nothing keeps its random init: refuse it with the fix."""
    if not hasattr(model, "peft_config") or not head:
        return
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(tuple(head))]
    if not trained:
        raise ConfigError(
            f"the peft model's head {list(head)} has no trainable parameter: it would keep its random init and "
            "every prediction would come from it untrained. Train it whole: LoraConfig(..., "
            "modules_to_save=['classifier']) or task_type='SEQ_CLS' (or optuna_deelbo.models.with_lora)"
        )


def default_head(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of ``model``'s new task head (``classifier`` / ``score`` / ``qa_outputs``), or none.

    A ``peft`` model (LoRA, ...) holds the task model under ``base_model.model``: its head is looked up
    there (``base_model.model.classifier.``: the copy trained under ``modules_to_save``; the frozen
    original is no trainable parameter, so the posterior leaves it out).
    """
    inner = getattr(getattr(model, "base_model", None), "model", None)
    if hasattr(model, "peft_config") and isinstance(inner, nn.Module):
        return tuple(f"base_model.model.{prefix}" for prefix in default_head(inner))
    names = {name for name, _ in model.named_children()}
    return tuple(f"{name}." for name in _HEAD_NAMES if name in names)


class DEELBoTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains with the DE-ELBo (see the module docstring).

    Args:
        *args: ``transformers.Trainer``'s positional arguments.
        **kwargs: ``transformers.Trainer``'s (``model`` or ``model_init``, ``args``,
            ``train_dataset``, ...). ``optimizers=(optimizer, scheduler)`` is refused (the posterior
            std must join the optimizer): choose it with ``args.optim`` or ``optimizer_cls_and_kwargs``.
        prior: body prior, ``"l2-sp"`` (mean = the weights when training starts: the pretrained
            ones), ``"l2-zero"`` or a :class:`~optuna_deelbo.bayes.GaussianPrior`.
        head: parameter-name prefixes of the new head (zero-mean prior, own variance ``tau``);
            ``None`` = :func:`default_head` (``classifier.``, ``score.`` or ``qa_outputs.``).
        n_train: ``N``; default ``len(train_dataset)``.
        selection: ``"deelbo"`` (default): the objective ``hyperparameter_search`` minimises is the
            selection score on the training set; ``"eval"``: the Trainer's own (``compute_objective``
            of an evaluation, which needs an ``eval_dataset``).
        selection_samples: posterior draws of the selection score.
        keep_best: under ``hyperparameter_search``, save the model of each trial that beats every
            earlier one to ``<output_dir>/best-trial`` (study attr ``best_model_dir``).
        deelbo_kwargs: passed to :class:`~optuna_deelbo.bayes.DEELBo` (``init_sigma``, ``kappa``,
            ``sigma_mode``, ...). For a ``peft`` model ``init_sigma`` defaults to
            :data:`~optuna_deelbo.models.LORA_INIT_SIGMA` (1e-2; the DE-ELBo's own default 1e-3 pins adapters).
        sigma_lr: ``None`` (default): the posterior std is one more group of the Trainer's optimizer, at
            its learning rate and schedule. A float: it trains in an Adam of its own at this constant
            rate, stepped after each optimizer step (its state saved beside each checkpoint's). Needed
            with a learning-rate-free optimizer (Prodigy through ``optimizer_cls_and_kwargs``: 0.05, as
            the own loop's ``deelbo-lr-free``); refused with fp16 (the loss scaler would not see it).

    Attributes:
        deelbo: the run's :class:`~optuna_deelbo.bayes.DEELBo` (``None`` before training starts).
        selection_score: the last run's score (nats per example), or ``None``.
        study: the Optuna study of the last trial trained (``hyperparameter_search``'s), or ``None``.
    """

    def __init__(
        self,
        *args: Any,
        prior: str | GaussianPrior = "l2-sp",
        head: Sequence[str] | None = None,
        n_train: int | None = None,
        selection: str = "deelbo",
        selection_samples: int = 10,
        keep_best: bool = False,
        deelbo_kwargs: Mapping[str, Any] | None = None,
        sigma_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers is not None and any(o is not None for o in optimizers):
            raise ConfigError(
                "DEELBoTrainer builds the optimizer itself (the posterior std joins it): choose it with "
                "TrainingArguments(optim=...) or optimizer_cls_and_kwargs=(cls, kwargs), not optimizers=(...)"
            )
        if selection not in ("deelbo", "eval"):
            raise ConfigError(f"selection must be 'deelbo' or 'eval', got {selection!r}")
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ConfigError(
                "DEELBoTrainer does not run under DataParallel (several GPUs in one process: the posterior std is "
                "outside the replicated module); launch one process per GPU (torchrun / accelerate launch: DDP)"
            )
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ConfigError(
                "DEELBoTrainer is tested under DDP only: FSDP and DeepSpeed shard the weights, and the posterior "
                "and the prior need every weight whole on each rank; launch plain DDP (torchrun / accelerate launch)"
            )
        if sigma_lr is not None:
            learning_rate(sigma_lr, "DEELBoTrainer(sigma_lr=...)")
            if self.args.fp16:
                raise ConfigError(
                    "DEELBoTrainer(sigma_lr=...) with fp16: the loss scaler unscales and skips the Trainer's optimizer "
                    "only, so the posterior std's own Adam would step on scaled gradients; use bf16, or sigma_lr=None"
                )
        self.sigma_lr = sigma_lr
        self.sigma_adam: SigmaAdam | None = None
        self._restored_sigma_adam: dict[str, Any] | None = None
        self.prior = prior
        self.head = None if head is None else tuple(head)
        self.n_train = n_train
        self.selection = selection
        self.selection_samples = selection_samples
        self.keep_best = keep_best
        self.deelbo_kwargs = dict(deelbo_kwargs or {})
        # compute_loss (below) returns the micro-batch's mean unless a compute_loss_func normalises by num_items
        self.loss_is_scaled_for_ga = self.compute_loss_func is not None
        self.deelbo: DEELBo | None = None
        self.selection_score: float | None = None
        self.study: optuna.Study | None = None
        self._restored: dict[str, Tensor] | None = None
        self._fitting = False  # inside Trainer.train: a checkpoint written now gets recalibrated BatchNorm statistics

    # --- the posterior ------------------------------------------------------------------------------
    @property
    def _net(self) -> nn.Module:
        """The model being trained (``model_init``'s for the current trial)."""
        if not isinstance(self.model, nn.Module):
            raise ConfigError("DEELBoTrainer has no model yet: pass model= or model_init=")
        return self.model

    def _output_dir(self) -> str:
        return str(self.args.output_dir if self.args.output_dir is not None else "trainer_output")

    def _n_train(self) -> int:
        if self.n_train is not None:
            return int(self.n_train)
        try:
            return len(self.train_dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError("the training dataset has no len(): pass DEELBoTrainer(n_train=N)") from None

    def _ensure_deelbo(self) -> DEELBo:
        """The run's DEELBo over ``self.model`` (a new one when ``model_init`` made a new model)."""
        net = self._net
        if self.deelbo is None or self.deelbo.model is not net:
            head = self.head if self.head is not None else default_head(net)
            _refuse_a_frozen_peft_head(net, head)
            kwargs = {"noise_seed": int(self.args.seed) % 2**32, **self.deelbo_kwargs}  # draws saved in checkpoints
            if is_peft_model(net):
                kwargs.setdefault("init_sigma", LORA_INIT_SIGMA)  # adapters start at B = 0: see LORA_INIT_SIGMA
            self.deelbo = DEELBo(net, self._n_train(), self.prior, head=head, **kwargs)
            self.deelbo.to(next(net.parameters()).device)
            if self._restored is not None:
                self.deelbo.load_posterior_state(self._restored)
                self._restored = None
            if _distributed():  # one posterior std on every rank from the start (DDP broadcasts the weights)
                for rho in self.deelbo.sigma_parameters():
                    torch.distributed.broadcast(rho.data, src=0)
        return self.deelbo

    def _check_weight_decay(self) -> None:
        if not self.args.weight_decay:
            return
        trial = getattr(self, "_trial", None)
        placeholder = isinstance(trial, optuna.trial.BaseTrial) and "weight_decay" in learned_names(trial)
        if _distributed():  # the other ranks' trial is a FixedTrial of rank 0's params (no study): rank 0 decides
            decision = [placeholder]
            torch.distributed.broadcast_object_list(decision, src=0)
            placeholder = bool(decision[0])
        if placeholder:
            self.args.weight_decay = 0.0  # DEELBoSampler's placeholder: the KL learns it instead
            return
        raise ConfigError(
            f"TrainingArguments(weight_decay={self.args.weight_decay!r}): the DE-ELBo learns the weight decay (the KL "
            "term), a second pull would shrink the weights and the posterior std twice; set weight_decay=0.0"
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer over the weights (weight decay 0) plus one group for the posterior std."""
        self._check_weight_decay()
        learning_rate(self.args.learning_rate, "TrainingArguments(learning_rate=...)")
        deelbo = self._ensure_deelbo()
        had = self.optimizer is not None
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        rho = list(deelbo.sigma_parameters())
        listed = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if had or any(id(p) in listed for p in rho):
            return optimizer
        if _distributed():  # before each step (the sigma_lr Adam steps after it, on the averaged gradients)
            optimizer.register_step_pre_hook(lambda *_: _average_across_ranks(rho))
        if self.sigma_lr is not None:
            self.sigma_adam = SigmaAdam(optimizer, rho, self.sigma_lr)  # clears rho's gradients after its step
            if self._restored_sigma_adam is not None:
                self.sigma_adam.adam.load_state_dict(self._restored_sigma_adam)
                self._restored_sigma_adam = None
            return optimizer
        name = learned_step_name(optimizer)
        if name is not None:
            raise ConfigError(
                f"the Trainer's optimizer ({name}) learns one step size for all it holds, sized for the weights: "
                "the posterior std must train apart from it. Pass DEELBoTrainer(sigma_lr=0.05): sigma then trains "
                "in an Adam of its own"
            )
        optimizer.add_param_group({"params": rho, "weight_decay": 0.0})
        # The Trainer clears the model's gradients after each step (model.zero_grad()); rho is no model
        # parameter, so its gradient is cleared here, or it would sum every step's (sigma trains wrong).
        optimizer.register_step_post_hook(lambda *_: _clear_grads(rho))
        return optimizer

    # --- the step -----------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Training: the Trainer's loss under one posterior draw, plus ``KL / (kappa N)``; evaluation: unchanged."""
        if not self._net.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        deelbo = self._ensure_deelbo()
        parent_loss = super().compute_loss  # the next class's loss (the Trainer's, or a mixed-in trainer's)
        # The model's own loss is the micro-batch's mean (num_items_in_batch withheld), which the Trainer divides by
        # the accumulation steps (loss_is_scaled_for_ga False): mean NLL + KL / (kappa N) per optimizer step. (Given
        # num_items_in_batch, a model that ignores it -- BertForSequenceClassification in transformers 5.24 --
        # would have its NLL summed over the micro-batches, G times the KL's weight.)
        items = num_items_in_batch if self.compute_loss_func is not None else None
        self.model_accepts_loss_kwargs = self.model_accepts_loss_kwargs and items is not None

        def sampled(**batch: Any) -> tuple[Tensor, Any]:
            out = parent_loss(model, batch, True, items)
            assert isinstance(out, tuple)
            return out[0], out[1]

        nll, outputs = deelbo.call_sampled(sampled, **inputs)
        loss = deelbo.loss(nll)
        if self.loss_is_scaled_for_ga:
            # a compute_loss_func's loss is a share of the accumulated batch's (sum / num_items): the Trainer does
            # not divide it by the accumulation steps, so the KL is spread over the micro-batches here
            loss = nll + (loss - nll) / max(1, int(getattr(self, "current_gradient_accumulation_steps", 1)))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs, with ``deelbo/lambda``, ``deelbo/sigma`` (and ``deelbo/tau``) on training logs."""
        if self.deelbo is not None and "loss" in logs:
            values = self.deelbo.learned_values()
            logs = {**logs, **{f"deelbo/{k}": float(values[k]) for k in ("lambda", "tau", "sigma") if k in values}}
        super().log(logs, start_time)

    # --- a run --------------------------------------------------------------------------------------
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``Trainer.train``, then BatchNorm recalibration, the selection score and the learned values (see above).

        ``trial``: an Optuna trial (``hyperparameter_search`` passes it; an own objective may too):
        gets the ``learned:*`` attrs; a diverged run prunes it (``failure:reason``).
        """
        if isinstance(trial, optuna.trial.BaseTrial) and self.selection == "deelbo":
            study = getattr(trial, "study", None)
            if study is not None and len(study.directions) > 1:
                raise ConfigError(
                    "the DE-ELBo selection score is one number: for hyperparameter_search(direction=[...]) pass "
                    "DEELBoTrainer(selection='eval') and a compute_objective that returns your objectives"
                )
            if study is not None and study.direction != optuna.study.StudyDirection.MINIMIZE:
                raise ConfigError(
                    "the DE-ELBo selection score is lower-is-better: hyperparameter_search(direction='minimize')"
                )
        # The posterior belongs to the model: a second train() on the same model continues it (as the Trainer
        # continues the weights and keeps its optimizer); model_init's new model per trial gets a new one.
        self._trial = trial
        if isinstance(trial, optuna.trial.BaseTrial):
            self.study = getattr(trial, "study", None)
        self._fitting = True
        try:
            output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        finally:
            self._fitting = False
        deelbo = self._ensure_deelbo()
        self._recalibrate(deelbo)
        if isinstance(trial, optuna.trial.BaseTrial) and self.args.process_index != 0:
            trial = None  # a search's other rank: rank 0 reports (and prunes); every rank holds the same posterior
        elif isinstance(trial, optuna.trial.BaseTrial):
            report_learned(trial, deelbo)  # prunes a diverged run
        else:
            deelbo.check_divergence()
        self.selection_score = self._score(deelbo)
        if self.selection == "deelbo":
            self.objective: float | None = self.selection_score
        if isinstance(trial, optuna.trial.BaseTrial):
            trial.set_user_attr(A.SELECT_RULE, "full-pass")
            trial.set_user_attr(A.select_key("full-pass"), self.selection_score)
            if self.keep_best:
                self._keep_if_best(trial, self.selection_score)
        final = {f"deelbo/{k}": float(v) for k, v in deelbo.learned_values().items() if isinstance(v, float)}
        final["deelbo/selection_score"] = self.selection_score
        # Trainer.train has ended (callbacks had on_train_end): no more logs; the values join its summary instead
        output.metrics.update(final)
        if self.state.log_history and "train_loss" in self.state.log_history[-1]:
            self.state.log_history[-1].update(final)
        return output

    def _ordered_train_loader(self) -> Any:
        """The whole training set in order, unshuffled, with the Trainer's collator (every rank: all of it).

        One process: the Trainer's eval loader over the training set. Several: a plain loader of the same
        dataset, batch size and collator (columns removed as the Trainer removes them), not sharded across the
        ranks, so each rank's score and BatchNorm statistics are those of the whole set, equal on every rank.
        """
        if not _distributed():
            return self.get_eval_dataloader(self.train_dataset)
        dataset, collator = self.train_dataset, self.data_collator
        if hasattr(dataset, "column_names") and hasattr(dataset, "remove_columns"):  # a datasets.Dataset
            dataset = self._remove_unused_columns(dataset, description="training set, in order")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training set, in order")
        return torch.utils.data.DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.args.eval_batch_size,
            collate_fn=collator,
            shuffle=False,
        )

    def _score(self, deelbo: DEELBo) -> float:
        """The final DE-ELBo over the whole training set (nats per example), dropout off, batch BatchNorm statistics."""
        loader = self._ordered_train_loader()

        def batch_nll(forward: Any, batch: Any) -> tuple[Tensor, int]:
            batch = self._prepare_inputs(batch)
            outputs = forward(**batch)
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs[0]
            if loss is None:
                raise ConfigError("the model returned no loss: the training set's batches need their labels")
            labels = batch.get("labels")
            count = int(labels.shape[0]) if isinstance(labels, Tensor) else int(next(iter(batch.values())).shape[0])
            return loss.float(), count

        return deelbo.selection_score(
            loader, samples=self.selection_samples, batch_nll=batch_nll, seed=int(self.args.seed)
        )

    def _keep_if_best(self, trial: optuna.trial.BaseTrial, score: float) -> None:
        study = getattr(trial, "study", None)
        if study is None:
            return
        done = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        best = min((v for v in done if v is not None), default=math.inf)
        if not score < best:
            return
        path = os.path.join(self._output_dir(), BEST_TRIAL_DIR)
        self.save_model(path)
        trial.set_user_attr(A.SAVED_MODEL_DIR, path)
        study.set_user_attr(A.BEST_MODEL_DIR, {"trial": trial.number, "path": path})

    def hyperparameter_search(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.hyperparameter_search``; with Optuna, the best run's hyperparameters hold the learned values.

        Under :class:`~optuna_deelbo.DEELBoSampler` the study's ``best_params["weight_decay"]`` is the
        placeholder the Trainer was handed; the returned ``BestRun.hyperparameters`` are
        :func:`~optuna_deelbo.learned_params` of the best trial instead (the weight decay the DE-ELBo
        learned). The study is :attr:`study`.
        """
        best = super().hyperparameter_search(*args, **kwargs)
        if self.study is None or isinstance(best, list) or not hasattr(best, "run_id"):
            return best
        trial = next((t for t in self.study.get_trials(deepcopy=False) if str(t.number) == str(best.run_id)), None)
        if trial is None:
            return best
        return type(best)(best.run_id, best.objective, A.learned_params(trial), getattr(best, "run_summary", None))

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's weights, and its posterior std and prior too."""
        super()._load_best_model()
        best = self.state.best_model_checkpoint
        path = os.path.join(best, DEELBO_STATE_NAME) if best is not None else None
        if self.deelbo is not None and path is not None and os.path.isfile(path):
            self.deelbo.load_posterior_state(torch.load(path, map_location="cpu", weights_only=True))

    # --- saving and resuming ------------------------------------------------------------------------
    def _recalibrate(self, deelbo: DEELBo) -> None:
        """BatchNorm statistics of the mean weights, from the training set in order (nothing without BatchNorm)."""
        net = self._net
        if batchnorm_layers(net):
            ordered = self._ordered_train_loader()
            deelbo.recalibrate_batchnorm(
                (self._prepare_inputs(batch) for batch in ordered), call=lambda batch: net(**batch)
            )

    @contextlib.contextmanager
    def _mean_weight_batchnorm(self, state_dict: dict[str, Any] | None) -> Iterator[None]:
        """While a checkpoint is written during training, the model's BatchNorm statistics are its mean weights'.

        The running statistics of the sampled training forwards would otherwise go into the checkpoint, and
        ``from_pretrained`` / ``load_best_model_at_end`` would predict with them. The model's own are put back
        afterwards (they only matter in eval mode), so training goes on unchanged. One pass over the
        training set per checkpoint; a given ``state_dict`` gets the recalibrated values too.
        """
        net = self._net
        tracked = set(batchnorm_layers(net))
        layers = {name: m for name, m in net.named_modules() if m in tracked}
        if not (self._fitting and layers and self.deelbo is not None and self.deelbo.model is net):
            yield
            return
        live = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in layers.items()}
        try:
            self._recalibrate(self.deelbo)
            if state_dict is not None:
                for name, m in layers.items():
                    for key, value in m.state_dict().items():
                        if f"{name}.{key}" in state_dict:
                            state_dict[f"{name}.{key}"] = value.detach().clone()
            yield
        finally:
            for name, m in layers.items():
                m.load_state_dict(live[name])

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        """``save_pretrained`` of the mean weights (the Trainer's), plus the posterior std and priors.

        A checkpoint written while training holds BatchNorm statistics recalibrated for its mean weights.
        """
        with self._mean_weight_batchnorm(state_dict):
            super()._save(output_dir, state_dict)
        if self.deelbo is None or not self.args.should_save:
            return
        folder = output_dir if output_dir is not None else self._output_dir()
        torch.save(self.deelbo.posterior_state(), os.path.join(folder, DEELBO_STATE_NAME))
        if self.sigma_adam is not None:
            torch.save(self.sigma_adam.adam.state_dict(), os.path.join(folder, SIGMA_ADAM_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, DEELBO_STATE_NAME)
        if not os.path.isfile(path):
            raise ConfigError(
                f"{resume_from_checkpoint} has no {DEELBO_STATE_NAME}: it was not written by DEELBoTrainer, so the "
                "posterior std and the prior mean cannot be restored"
            )
        self._restored = torch.load(path, map_location="cpu", weights_only=True)
        self.deelbo = None
        self._restored_sigma_adam = self._sigma_adam_state(resume_from_checkpoint)

    def _sigma_adam_state(self, checkpoint: str) -> dict[str, Any] | None:
        """The checkpoint's state of sigma's own Adam; refuses a checkpoint of the other ``sigma_lr`` mode."""
        path = os.path.join(checkpoint, SIGMA_ADAM_STATE_NAME)
        saved = os.path.isfile(path)
        if saved != (self.sigma_lr is not None):
            own, shared = "with sigma_lr (sigma in its own Adam)", "with sigma_lr=None (sigma in the optimizer)"
            written = own if saved else shared
            raise ConfigError(
                f"{checkpoint} was written {written}: resume it with the same sigma_lr setting, or its optimizer "
                "state does not fit"
            )
        return torch.load(path, map_location="cpu", weights_only=True) if saved else None
