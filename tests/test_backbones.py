"""Tests for :mod:`optuna_deelbo.models._backbones`: head split, one DE-ELBo step, head seeds, checkpoints.

Every backbone is built with random initialisation (``weights=None``), so nothing is downloaded.
The torchvision backbones (ResNet-18/50, ConvNeXt-Tiny) take a few seconds each on CPU; each is
built once per module (:func:`_backbone`) and the tests work on deep copies.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._objectives import DEELBoObjective
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import IsotropicGaussian
from optuna_deelbo.models._backbones import BACKBONE_NAMES, Backbone, CifarResNet, build_backbone, load_checkpoint
from optuna_deelbo.models._small_cnn import SmallCNN

N_CLASSES = 5

#: Input width of each backbone's classifier (the penultimate feature size).
HEAD_IN_FEATURES = {"cifar-resnet20": 64, "resnet18": 512, "resnet50": 2048, "convnext_tiny": 768}
#: The head's parameter-name prefix each backbone is expected to report.
HEAD_PREFIX = {"cifar-resnet20": "head.", "resnet18": "fc.", "resnet50": "fc.", "convnext_tiny": "classifier.2."}


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@functools.cache
def _backbone(name: str) -> Backbone:
    """``build_backbone(name, N_CLASSES)`` (random init, seed 0), built once per name; deep-copy before mutating."""
    torch.manual_seed(0)
    return build_backbone(name, N_CLASSES)


def _fresh(name: str) -> tuple[nn.Module, Backbone]:
    """A private copy of the cached backbone's model, and the backbone."""
    built = _backbone(name)
    return copy.deepcopy(built.model), built


def _params(model: nn.Module) -> dict[str, Tensor]:
    """Detached clones of the model's parameters by name."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _head_params(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    return {k: v for k, v in _params(model).items() if k.startswith(prefixes)}


def _body_state(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Parameters and buffers outside the head, cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def _assert_same_tensors(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with every floating parameter and buffer overwritten by seeded noise (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1 + 0.5)
    return model


# --- build_backbone: head split and one DE-ELBo step ------------------------------------------


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_head_prefix_is_exactly_the_new_head(name: str) -> None:
    model, built = _fresh(name)
    prefix = HEAD_PREFIX[name]
    assert built.head_prefixes == (prefix,)
    head = _head_params(model, built.head_prefixes)
    assert set(head) == {prefix + "weight", prefix + "bias"}
    assert head[prefix + "weight"].shape == (N_CLASSES, HEAD_IN_FEATURES[name])
    assert head[prefix + "bias"].shape == (N_CLASSES,)

    groups = ParameterGroups.split(model, built.head_prefixes)
    assert set(groups.head) == set(head)
    assert set(groups.body) == {n for n, _ in model.named_parameters()} - set(head)
    assert groups.numel(model, "head") == N_CLASSES * (HEAD_IN_FEATURES[name] + 1)
    assert groups.numel(model, "body") > 10 * groups.numel(model, "head")


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_one_deelbo_step_is_finite_and_moves_the_weights(name: str) -> None:
    model, built = _fresh(name)
    groups = ParameterGroups.split(model, built.head_prefixes)
    prior = IsotropicGaussian(groups.flat(dict(model.named_parameters()), "body").detach().clone())
    objective = DEELBoObjective(DEELBo(model, 100, prior, head=groups))
    params = [p for p in model.parameters() if p.requires_grad] + list(objective.extra_parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3)
    before = _params(model)
    sigma_before = [p.detach().clone() for p in objective.extra_parameters()]

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    y = torch.tensor([0, N_CLASSES - 1])
    objective.train()
    record = objective(x, y)
    assert record.lam is not None and record.tau is not None
    loss, lam, tau = (float(t.detach()) for t in (record.loss, record.lam, record.tau))
    assert math.isfinite(loss)
    assert math.isfinite(lam) and lam > 0
    assert math.isfinite(tau) and tau > 0
    optimizer.zero_grad(set_to_none=True)
    record.loss.backward()
    optimizer.step()

    after = _params(model)
    head = set(_head_params(model, built.head_prefixes))
    assert any(not torch.equal(before[k], after[k]) for k in head), "the head did not move"
    assert any(not torch.equal(before[k], after[k]) for k in after if k not in head), "the body did not move"
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(sigma_before, objective.extra_parameters(), strict=True))


# --- replace_head ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_replace_head_is_seeded_and_leaves_the_body(name: str) -> None:
    model, built = _fresh(name)
    body = _body_state(model, built.head_prefixes)
    models = [copy.deepcopy(model) for _ in range(3)]
    rng_before = torch.random.get_rng_state()
    for m, seed in zip(models, (7, 7, 8), strict=True):
        built.replace_head(m, 3, seed)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "replace_head changed the global RNG"

    heads = [_head_params(m, built.head_prefixes) for m in models]
    prefix = HEAD_PREFIX[name]
    assert heads[0][prefix + "weight"].shape == (3, HEAD_IN_FEATURES[name])
    assert heads[0][prefix + "bias"].shape == (3,)
    _assert_same_tensors(heads[0], heads[1])
    assert not torch.equal(heads[0][prefix + "weight"], heads[2][prefix + "weight"])
    assert not torch.equal(heads[0][prefix + "bias"], heads[2][prefix + "bias"])
    for m in models:
        _assert_same_tensors(_body_state(m, built.head_prefixes), body)
    assert models[0](torch.zeros(2, 3, 32, 32)).shape == (2, 3)  # the new head is the one in use


@pytest.mark.parametrize(
    "model",
    [
        SmallCNN(3),
        nn.ModuleDict({"classifier": nn.Sequential(nn.Linear(4, 2))}),
        nn.ModuleDict({"classifier": nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())}),
    ],
    ids=["no-classifier", "short-classifier", "no-linear"],
)
def test_convnext_replace_head_on_a_foreign_model_raises(model: nn.Module) -> None:
    replace = _backbone("convnext_tiny").replace_head
    with pytest.raises(ConfigError, match="ConvNeXt"):
        replace(model, 3, 0)


def test_build_backbone_seed_sets_the_head() -> None:
    a = build_backbone("cifar-resnet20", 4, seed=3).model.head
    b = build_backbone("cifar-resnet20", 4, seed=3).model.head
    c = build_backbone("cifar-resnet20", 4, seed=4).model.head
    assert isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and isinstance(c, nn.Linear)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


@pytest.mark.parametrize("name", ["cifar-resnet20", "resnet18"])
def test_build_backbone_seed_sets_every_weight_whatever_the_global_generator(name: str) -> None:
    """torch seeds its global generator afresh in every process; the body's init drew from it unseeded,
    so every Split-CIFAR pretraining started from another body (measured: 50.1 % against 55.7 % and
    55.9 % downstream for one and the same DE-ELBo run). Two processes are two global states here."""
    torch.manual_seed(1)
    a = build_backbone(name, 4, seed=3).model.state_dict()
    outside = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = build_backbone(name, 4, seed=3).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(2)
    c = build_backbone(name, 4, seed=4).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    torch.manual_seed(1)
    build_backbone(name, 4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), outside)  # the global generator is not drawn from


def test_split_cifar_pretraining_gives_one_body_per_setting(tmp_path: Path) -> None:
    """The cached body is a function of its cache key (what split_cifar_task reuses across processes)."""
    from optuna_deelbo.data._splits import Split
    from optuna_deelbo.task._builtin import _pretrained_backbone

    generator = torch.Generator().manual_seed(0)
    source = Split(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(32) % 5)
    bodies = []
    for global_seed, stem in ((1, tmp_path / "a"), (2, tmp_path / "b")):
        torch.manual_seed(global_seed)
        built, _, seconds = _pretrained_backbone(stem, "cifar-resnet20", source, 3, 8, 0, 0, "cpu", False)
        assert seconds > 0  # trained, not read from a cache
        bodies.append(built.model.state_dict())
    assert all(torch.equal(bodies[0][k], bodies[1][k]) for k in bodies[0])


# --- load_checkpoint ---------------------------------------------------------------------------


def _saved_source(tmp_path: Path) -> tuple[Path, dict[str, Tensor]]:
    """A CifarResNet(5) with non-default weights and buffers saved to ``tmp_path``; returns path and state."""
    torch.manual_seed(123)
    source = _randomised(CifarResNet(5), seed=5)
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    path = tmp_path / "source.pt"
    torch.save(state, path)
    return path, state


def test_checkpoint_body_is_loaded_exactly_with_a_new_head(tmp_path: Path) -> None:
    path, state = _saved_source(tmp_path)
    built = build_backbone("cifar-resnet20", 3, weights=path)
    loaded = built.model.state_dict()
    body_keys = [k for k in state if not k.startswith("head.")]
    assert set(body_keys) == {k for k in loaded if not k.startswith("head.")}
    for key in body_keys:
        assert torch.equal(loaded[key], state[key]), key
    assert built.model.head.weight.shape == (3, 64)
    assert built.model.head.bias.shape == (3,)
    assert built.model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_checkpoint_wrapped_in_a_state_dict_key_loads(tmp_path: Path) -> None:
    _, state = _saved_source(tmp_path)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state}, path)
    model = CifarResNet(5)
    load_checkpoint(model, path)
    _assert_same_tensors({k: v for k, v in model.state_dict().items()}, state)


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a torch file \x00\x01\x02" * 10)


def _write_non_tensors(path: Path) -> None:
    torch.save({"conv.weight": [1.0, 2.0], "epoch": 3}, path)


def _write_other_architecture(path: Path) -> None:
    torch.save(SmallCNN(5, in_channels=3).state_dict(), path)


def _write_wrong_width(path: Path) -> None:
    torch.save(CifarResNet(5, width=8).state_dict(), path)


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (None, "does not exist"),
        (_write_garbage, "cannot be read"),
        (_write_non_tensors, "not a state_dict of tensors"),
        (_write_other_architecture, "does not fit the model"),
        (_write_wrong_width, "wrong shapes"),
    ],
    ids=["missing", "garbage", "non-tensors", "other-architecture", "wrong-width"],
)
def test_bad_checkpoint_raises_config_error(
    tmp_path: Path, writer: Callable[[Path], None] | None, message: str
) -> None:
    path = tmp_path / "bad.pt"
    if writer is not None:
        writer(path)
    with pytest.raises(ConfigError, match=message):
        build_backbone("cifar-resnet20", 3, weights=path)
    model = CifarResNet(3)
    before = _body_state(model, ())
    with pytest.raises(ConfigError, match=message):
        load_checkpoint(model, path, skip_prefixes=("head.",))
    _assert_same_tensors(_body_state(model, ()), before)


def test_other_architecture_error_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    _write_other_architecture(path)
    with pytest.raises(ConfigError, match=r"missing \['features\..*unexpected \['features\."):
        build_backbone("cifar-resnet20", 3, weights=path)


def test_default_weights_for_cifar_resnet_raise() -> None:
    with pytest.raises(ConfigError, match="no torchvision weights"):
        build_backbone("cifar-resnet20", 3, weights="DEFAULT")


@pytest.mark.parametrize(("name", "n_classes"), [("resnet-9000", 5), ("", 5), ("cifar-resnet20", 1), ("resnet18", 0)])
def test_bad_build_arguments_raise(name: str, n_classes: int) -> None:
    with pytest.raises(ConfigError):
        build_backbone(name, n_classes)


@pytest.mark.parametrize("depth", [21, 2, 7, 19])
def test_cifar_resnet_bad_depth_raises(depth: int) -> None:
    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNet(5, depth=depth)


# --- CifarResNet -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 10])
def test_cifar_resnet20_size_and_shapes(n_classes: int) -> None:
    model = CifarResNet(n_classes, depth=20)
    n_params = sum(p.numel() for p in model.parameters())
    assert 260_000 <= n_params <= 280_000
    model.eval()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, n_classes)
    assert torch.isfinite(out).all()


def test_cifar_resnet_depth_sets_block_count() -> None:
    def blocks(model: nn.Module) -> int:
        return sum(1 for module in model.modules() if type(module).__name__ == "CifarBasicBlock")

    assert blocks(CifarResNet(5, depth=8)) == 3
    assert blocks(CifarResNet(5, depth=32)) == 15
