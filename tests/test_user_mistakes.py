"""Issue 22: the mistakes a user makes adopting ``od.DEELBo`` in an own loop are loud, not silent.

Each test names the case of issue 22's "What was measured"; on c55ea9a each of these ran to the
end with a plausible result and no error or warning (cases 1-6, 8, 11) or failed late (9, 10).
Cases 7 (selection), 9 (Lightning), 10 (optunahub) and 12-13 (CLI) have their tests in
test_own_loop_selection.py, test_integrations.py and test_cli_fuzz.py.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from _docs import doc_pages
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optuna_deelbo as od

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task() -> od.TaskSpec:
    """The embedded digits task (SmallCNN with BatchNorm, pretrained body, new head), N = 100."""
    spec, _ = od.digits_task(n_train=100, steps=20, pretrain_steps=30)
    return spec


def _train(
    reg: od.DEELBo, make_optimizer: Callable[[od.DEELBo], torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor
) -> None:
    optimizer = make_optimizer(reg)
    reg.train()
    for step in range(6):
        idx = torch.arange(step * 20, step * 20 + 20) % len(x)
        loss = reg.loss(nn.functional.cross_entropy(reg(x[idx]), y[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_case1_optimizer_without_the_posterior_std_is_an_error(task: od.TaskSpec) -> None:
    """Case 1: an optimizer over model.parameters() left sigma at 1e-3 for the whole run."""
    x, y = task.train.x, task.train.y
    for make in (
        lambda r: torch.optim.SGD(r.model.parameters(), lr=0.05, momentum=0.9),
        lambda r: torch.optim.SGD([{"params": list(r.model.parameters()), "lr": 0.05}], lr=0.05),
    ):
        reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
        with pytest.raises(od.ConfigError, match=r"posterior std \(sigma\) does not.*reg\.optimizer"):
            _train(reg, make, x, y)
    reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)  # sigma only: weights left out
    with pytest.raises(od.ConfigError, match="weights do not"):
        _train(reg, lambda r: torch.optim.SGD(r.sigma_parameters(), lr=0.05), x, y)


def test_case1_the_helper_and_reg_parameters_train_both(task: od.TaskSpec) -> None:
    x, y = task.train.x, task.train.y
    for make in (
        lambda r: r.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9),
        lambda r: torch.optim.SGD(r.parameters(), lr=0.05, momentum=0.9),
        lambda r: r.optimizer(
            torch.optim.SGD,
            lr=0.05,
            param_groups=[
                {"params": [p for n, p in r.model.named_parameters() if n.startswith("head.")], "lr": 0.1},
                {"params": [p for n, p in r.model.named_parameters() if not n.startswith("head.")]},
            ],
        ),
    ):
        reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
        _train(reg, make, x, y)
        assert reg.sigma != pytest.approx(1e-3, rel=1e-4)


def test_case1_lr_warm_up_from_zero_is_not_mistaken_for_a_missing_sigma(task: od.TaskSpec) -> None:
    """Steps that move nothing (lr 0 at the start of a warm-up) are not counted as lopsided."""
    x, y = task.train.x, task.train.y
    reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
    optimizer = reg.optimizer(torch.optim.SGD, lr=0.05)
    warm_up = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0 if step < 3 else 1.0)
    reg.train()
    for step in range(7):
        idx = torch.arange(step * 10, step * 10 + 10)
        loss = reg.loss(nn.functional.cross_entropy(reg(x[idx]), y[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warm_up.step()
    assert reg.sigma != pytest.approx(1e-3, rel=1e-4)


def test_case2_an_optimizer_with_its_own_weight_decay_is_an_error(task: od.TaskSpec) -> None:
    """Case 2: AdamW's default weight_decay=0.01 stacked a second weight decay and also decayed sigma."""
    x, y = task.train.x, task.train.y
    reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
    with pytest.raises(od.ConfigError, match=r"AdamW\) applies weight_decay=0.01.*weight_decay=0"):
        _train(reg, lambda r: torch.optim.AdamW(r.parameters(), lr=1e-3), x, y)
    with pytest.raises(od.ConfigError, match="learns the weight decay"):
        reg.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    optimizer = reg.optimizer(torch.optim.AdamW, lr=1e-3)  # AdamW through the helper: weight decay 0
    assert all(group["weight_decay"] == 0 for group in optimizer.param_groups)
    reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
    _train(reg, lambda r: r.optimizer(torch.optim.AdamW, lr=1e-3), x, y)
    assert reg.sigma != pytest.approx(1e-3, rel=1e-4)


def test_case3_n_train_as_the_number_of_batches_is_an_error(task: od.TaskSpec) -> None:
    """Case 3: n_train=len(loader) (batches, not examples) gave a wrong kappa without a word."""
    train_set = TensorDataset(task.train.x, task.train.y)
    loader = DataLoader(train_set, batch_size=25)
    reg = od.DEELBo(task.build_model(), n_train=len(loader), head=task.head_prefixes)
    xb, _ = next(iter(loader))
    reg.train()
    with pytest.raises(od.ConfigError, match=r"batch of 25 examples but n_train=4.*len\(dataset\), not len\(loader\)"):
        reg(xb)
    for data in (loader, train_set, task.train, (task.train.x, task.train.y)):  # the data itself: N counted
        assert od.DEELBo(task.build_model(), n_train=data, head=task.head_prefixes).n_train == 100
    reg = od.DEELBo(task.build_model(), n_train=100, head=task.head_prefixes)
    with pytest.raises(od.ConfigError, match="got 50 examples but n_train=100"):
        reg.selection_score((task.train.x[:50], task.train.y[:50]))


def test_case4_weights_loaded_after_wrapping_are_the_l2sp_prior_mean(task: od.TaskSpec) -> None:
    """Case 4: the L2-SP mean was taken at construction: pretrained weights loaded after wrapping were ignored."""
    pretrained = task.build_model()
    torch.manual_seed(123)
    model = task.build_model()
    with torch.no_grad():  # a different starting point, as a freshly built (random) network would be
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    reg = od.DEELBo(model, n_train=100, prior="l2-sp", head=task.head_prefixes)
    model.load_state_dict(pretrained.state_dict())  # the user loads the pretrained weights now
    reg.train()
    reg(task.train.x[:8])  # the first training forward fixes the mean
    body = reg.groups.flat(dict(pretrained.named_parameters()), "body")
    assert torch.equal(reg.body_prior.mean, body)
    assert reg.lam < 1e-3  # at the pretrained weights the only spread is sigma's (c55ea9a: ~1 from the random start)
    state = reg.state_dict()  # a checkpoint keeps its own mean: loading it does not re-take the mean
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    reg.load_state_dict(state)
    reg(task.train.x[:8])
    assert torch.equal(reg.body_prior.mean, body)


def test_case5_model_eval_alone_predicts_with_the_mean_weights(task: od.TaskSpec) -> None:
    """Case 5: model.eval() without reg.eval() still sampled weights (two calls differed by 0.0087)."""
    model = task.build_model()
    reg = od.DEELBo(model, n_train=100, head=task.head_prefixes, init_sigma=0.05)
    reg.train()
    model.eval()
    x = task.train.x[:16]
    assert torch.equal(reg(x), reg(x))
    assert torch.equal(reg(x), model(x))
    model.train()  # and the reverse: the wrapped model's own flag decides
    assert not torch.equal(reg(x), reg(x))


def test_case6_best_params_shows_the_learned_weight_decay(task: od.TaskSpec) -> None:
    """Case 6: study.best_params (and the dashboard's params column) showed the placeholder weight_decay 1e-07."""
    x, y = task.train.x, task.train.y

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
        reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
        _train(reg, lambda r: r.optimizer(torch.optim.SGD, lr=lr, momentum=0.9), x, y)
        od.report_learned(trial, reg)
        return reg.selection_score((x, y))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.05, 0.01]})))
    study.optimize(objective, n_trials=2)
    assert study.best_params["weight_decay"] == 1e-7  # Optuna's own view: the placeholder
    best = od.best_params(study)
    assert best["lr"] == study.best_params["lr"]
    assert best["weight_decay"] == study.best_trial.user_attrs["learned:weight_decay"] != 1e-7
    assert od.learned_params(study.trials[1])["weight_decay"] == study.trials[1].user_attrs["learned:weight_decay"]


def test_case8_a_diverged_own_loop_is_flagged_as_in_fit(task: od.TaskSpec) -> None:
    """Case 8: lr = 1e6 completed with a trial value of 3.7e14; od.fit prunes such a run with failure:reason."""
    x, y = task.train.x, task.train.y
    reg = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inf / nan arithmetic on the way
        _train(reg, lambda r: r.optimizer(torch.optim.SGD, lr=1e6), x, y)
    with pytest.raises(od.TrainingDiverged, match=r"non-finite|diverging|exploding"):
        reg.selection_score((x, y))
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        od.report_learned(trial, reg)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert re.match("non-finite|diverging|exploding", study.trials[0].user_attrs["failure:reason"])
    healthy = od.DEELBo(task.build_model(), n_train=len(x), head=task.head_prefixes)
    _train(healthy, lambda r: r.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9), x, y)
    healthy.check_divergence()  # a healthy run passes the same check


def test_case8_a_runaway_but_finite_nll_is_diverging() -> None:
    """The running NLL above 10x the first step's (finite values only) is the 'diverging' kind."""
    health = od.DEELBo(nn.Linear(2, 2), n_train=4, prior="l2-zero").health
    for value in (1.0, 2.0, 500.0, 800.0, 900.0):
        health.record(torch.tensor(value))
    with pytest.raises(od.TrainingDiverged, match="diverging: running training NLL"):
        health.check(max_sigma=0.01)


def test_case11_evaluate_fit_and_tasks_take_datasets_and_loaders(task: od.TaskSpec) -> None:
    """Case 11: od.evaluate(model, loader, None) raised AttributeError; Split and TaskSpec took tensors only."""
    assert task.test is not None
    model = task.build_model()
    expected = od.evaluate(model, task.test.x, task.test.y)
    test_set = TensorDataset(task.test.x, task.test.y)
    for data in (DataLoader(test_set, batch_size=33), test_set, task.test):
        got = od.evaluate(model, data)
        assert got.accuracy == expected.accuracy and got.nll == pytest.approx(expected.nll, rel=1e-6)
    assert od.evaluate(model, DataLoader(test_set, batch_size=64), None).accuracy == expected.accuracy
    train_set = TensorDataset(task.train.x, task.train.y)
    loaded = od.Split.from_data(DataLoader(train_set, batch_size=7, shuffle=True))  # read in the dataset's order
    assert torch.equal(loaded.x, task.train.x) and torch.equal(loaded.y, task.train.y)
    spec = od.TaskSpec(
        name="from-datasets",
        model_factory=task.model_factory,
        train=train_set,  # type: ignore[arg-type]
        test=DataLoader(test_set, batch_size=100),  # type: ignore[arg-type]
        head_prefixes=task.head_prefixes,
        steps=2,
    )
    assert isinstance(spec.train, od.Split) and len(spec.train) == 100 and len(spec.test or ()) == len(test_set)
    with pytest.raises(od.ConfigError, match="train: expected"):
        od.TaskSpec(name="bad", model_factory=task.model_factory, train=[1, 2, 3])  # type: ignore[arg-type]


def test_case14_user_facing_text_names_no_private_module() -> None:
    """Case 14: the README sent users to optuna_deelbo.tuning._fit (a private module); the docs neither."""
    private = re.compile(r"optuna_deelbo(\.[a-z_]+)*\._[a-z]\w*")
    for page, text in doc_pages().items():
        assert not private.search(text), (page, private.search(text))
    hub = (ROOT / "optuna_deelbo" / "integrations" / "hub" / "samplers" / "deelbo" / "README.md").read_text()
    assert not private.search(hub)
    for path in (ROOT / "optuna_deelbo").rglob("*.py"):  # error texts and warnings: no private paths either
        for literal in re.findall(r'f?"[^"\n]*"', path.read_text()):
            assert not private.search(literal), (path, literal)
