"""The small float64 network the maths tests share (objectives, posterior, training loop).

``body`` = Linear(4, 8) + BatchNorm1d(8) + ReLU (:data:`D_BODY` weights), ``head`` = Linear(8, 3) (:data:`D_HEAD`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from optuna_deelbo.bayes import ParameterGroups

F64 = torch.float64
D_BODY = 32 + 8 + 8 + 8
D_HEAD = 24 + 3
D_ALL = D_BODY + D_HEAD


class Net(nn.Module):
    """``body`` = Linear(4, 8) + BatchNorm1d(8) + ReLU, ``head`` = Linear(8, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def make_net(seed: int = 0) -> tuple[Net, ParameterGroups]:
    """A seeded float64 :class:`Net` and its body / head split (head prefix ``"head."``)."""
    torch.manual_seed(seed)
    net = Net().to(F64)
    return net, ParameterGroups.split(net, ("head.",))
