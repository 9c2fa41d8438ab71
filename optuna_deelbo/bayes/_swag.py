"""SWAG moments collected during source-task pretraining, and the PTYL prior built from them.

SWAG (Maddox et al. 2019) summarises the SGD trajectory ``theta_1 .. theta_n`` (flat body
weights, shape ``(D,)``) by a running mean, a per-weight variance and the last ``K``
deviation columns ``theta_i - mean_i`` (``mean_i`` is the running mean *after* adding
``theta_i``, as in the paper's Algorithm 1). Its covariance is::

    Sigma = 0.5 * diag(var) + 1 / (2 (K - 1)) * D_hat D_hat^T,    D_hat: (D, K)

PTYL ("pre-train your loss", Shwartz-Ziv et al. 2022) uses ``N(mean, lam * Sigma)`` as the
prior for transfer learning. In the DE-ELBo setting ``lam`` is learned, so the absolute scale
of ``Sigma`` is absorbed into ``lam``; the ``scale`` arguments below only matter for MAP use,
where ``lam`` is fixed (PTYL's paper rescales ``Sigma`` by a tuned factor there).

Typical use during pretraining::

    collector = SWAGCollector(groups.numel(model, "body"), max_rank=20)
    for step in ...:                                    # after each optimiser step
        collector.collect_module(model, groups)
    collector.moments().save("swag.pt")
    prior = SWAGMoments.load("swag.pt").to_prior()      # LowRankGaussian
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import LowRankGaussian

__all__ = ["SWAG_FORMAT", "SWAG_FORMAT_VERSION", "SWAGCollector", "SWAGMoments"]

#: Tag stored in every checkpoint written by :meth:`SWAGMoments.save`.
SWAG_FORMAT = "optuna_deelbo.swag_moments"
#: Version of the checkpoint layout; :meth:`SWAGMoments.load` refuses newer ones.
SWAG_FORMAT_VERSION = 1

_KEYS = ("mean", "diag_variance", "deviations")


@dataclass(frozen=True)
class SWAGMoments:
    """The SWAG summary of a weight trajectory.

    Attributes:
        mean: ``theta_SWA``, the average of the snapshots, shape ``(D,)`` (weight units).
        diag_variance: per-weight variance of the snapshots, shape ``(D,)`` (weight^2), >= 0.
        deviations: the last ``K`` deviation columns ``theta_i - mean_i`` in chronological
            order (oldest first), shape ``(D, K)``.
        n_collected: number of snapshots averaged, >= 2 and >= ``K``.
    """

    mean: Tensor
    diag_variance: Tensor
    deviations: Tensor
    n_collected: int

    def __post_init__(self) -> None:
        mean, var, dev = self.mean, self.diag_variance, self.deviations
        for name in _KEYS:
            value = getattr(self, name)
            if not isinstance(value, Tensor) or not torch.is_floating_point(value):
                raise ConfigError(f"SWAG {name} must be a floating-point tensor, got {type(value).__name__}")
        if mean.ndim != 1 or mean.shape[0] == 0:
            raise ConfigError(f"SWAG mean must be a non-empty flat vector, got shape {tuple(mean.shape)}")
        dim = int(mean.shape[0])
        if var.shape != mean.shape:
            raise ConfigError(f"SWAG diag_variance must have shape ({dim},), got {tuple(var.shape)}")
        if dev.ndim != 2 or dev.shape[0] != dim:
            raise ConfigError(f"SWAG deviations must have shape ({dim}, K), got {tuple(dev.shape)}")
        if not (var.dtype == dev.dtype == mean.dtype) or not (var.device == dev.device == mean.device):
            raise ConfigError("SWAG mean, diag_variance and deviations must share one dtype and device")
        n = self.n_collected
        if isinstance(n, bool) or not isinstance(n, int) or n < max(2, int(dev.shape[1])):
            raise ConfigError(f"SWAG n_collected must be an int >= max(2, K={dev.shape[1]}), got {n!r}")
        if not all(bool(torch.all(torch.isfinite(t))) for t in (mean, var, dev)):
            raise ConfigError("SWAG moments contain non-finite values (did the trajectory diverge?)")
        if not bool(torch.all(var >= 0)):
            raise ConfigError("SWAG diag_variance must be >= 0")

    @property
    def dim(self) -> int:
        """``D``, the number of weights."""
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        """``K``, the number of deviation columns held."""
        return int(self.deviations.shape[1])

    def covariance_factors(self, scale: float = 1.0, min_variance: float = 1e-8) -> tuple[Tensor, Tensor]:
        """``(a, U)`` with ``scale * Sigma_SWAG = diag(a) + U U^T`` (diagonal floored).

        ``a = 0.5 * scale * clamp(diag_variance, min=min_variance)`` and
        ``U = deviations * sqrt(scale / (2 (K - 1)))``. With ``K <= 1`` the low-rank term is
        undefined and dropped: ``U`` then has shape ``(D, 0)``.

        Args:
            scale: multiplies ``Sigma``; only meaningful for MAP (a learned ``lam`` absorbs it).
            min_variance: floor on the per-weight variance (weight^2) so that ``a > 0``.

        Returns:
            ``a`` of shape ``(D,)`` (weight^2) and ``U`` of shape ``(D, K)`` or ``(D, 0)``.
        """
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"SWAG covariance scale must be a positive finite number, got {scale!r}")
        if not (math.isfinite(min_variance) and min_variance > 0):
            raise ConfigError(f"min_variance must be a positive finite number, got {min_variance!r}")
        diagonal = 0.5 * scale * torch.clamp(self.diag_variance, min=min_variance)
        rank = self.rank
        if rank <= 1:
            return diagonal, self.deviations.new_zeros((self.dim, 0))
        return diagonal, self.deviations * math.sqrt(scale / (2.0 * (rank - 1)))

    def unit_trace_scale(self, min_variance: float = 1e-8) -> float:
        """The ``scale`` at which ``Tr(scale * Sigma_SWAG) / D = 1`` (mean prior variance 1 weight^2 at ``lam = 1``).

        SWAG's covariance is tiny (weights move little late in pretraining), so at scale 1 the
        MAP weight decays of a usual grid (1e-7 .. 1e-2) are all far too strong for PTYL; at unit
        trace they mean what they mean for the isotropic priors. The DE-ELBo's learned ``lam``
        absorbs any scale, so its runs do not change.
        """
        diagonal, factor = self.covariance_factors(min_variance=min_variance)
        trace = float(diagonal.double().sum() + (factor.double() ** 2).sum())
        return self.dim / trace

    def to_prior(self, scale: float = 1.0, min_variance: float = 1e-8) -> LowRankGaussian:
        """The PTYL prior ``N(mean, lam * scale * Sigma_SWAG)`` (``lam`` chosen later).

        Args:
            scale: see :meth:`covariance_factors`; leave at 1 for the DE-ELBo.
            min_variance: see :meth:`covariance_factors`.
        """
        diagonal, factor = self.covariance_factors(scale, min_variance)
        return LowRankGaussian(self.mean.clone(), diagonal, factor)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the moments (CPU tensors, format tag and version) with ``torch.save``."""
        torch.save(
            {
                "format": SWAG_FORMAT,
                "version": SWAG_FORMAT_VERSION,
                **{name: getattr(self, name).detach().cpu() for name in _KEYS},
                "n_collected": int(self.n_collected),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str | None = None) -> SWAGMoments:
        """Read moments written by :meth:`save` onto ``device`` (default CPU).

        Raises:
            ConfigError: the file is missing, unreadable, not a SWAG checkpoint, of a newer
                format version, or holds inconsistent shapes.
        """
        if not os.path.isfile(path):
            raise ConfigError(f"no SWAG checkpoint at {os.fspath(path)!r} (file not found)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(
                f"cannot read SWAG checkpoint {os.fspath(path)!r}; the file is corrupt or not a torch file "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        if not isinstance(data, dict) or data.get("format") != SWAG_FORMAT:
            raise ConfigError(
                f"{os.fspath(path)!r} is not a SWAG checkpoint (expected format tag {SWAG_FORMAT!r}); "
                "write one with SWAGMoments.save"
            )
        version = data.get("version")
        if not isinstance(version, int) or not 1 <= version <= SWAG_FORMAT_VERSION:
            raise ConfigError(
                f"SWAG checkpoint {os.fspath(path)!r} has format version {version!r}; "
                f"this package reads versions 1..{SWAG_FORMAT_VERSION}"
            )
        missing = [k for k in (*_KEYS, "n_collected") if k not in data]
        if missing:
            raise ConfigError(f"SWAG checkpoint {os.fspath(path)!r} lacks {missing}")
        try:
            tensors = {}
            for name in _KEYS:
                value = data[name]
                if not isinstance(value, Tensor):
                    raise ConfigError(f"SWAG {name} must be a tensor, got {type(value).__name__}")
                tensors[name] = value.to(device=device)
            return cls(n_collected=data["n_collected"], **tensors)
        except ConfigError as exc:
            raise ConfigError(f"inconsistent SWAG checkpoint {os.fspath(path)!r}: {exc}") from None


class SWAGCollector:
    """Running SWAG moments over flat weight snapshots of length ``dim``.

    The variance is accumulated with Welford's update (sum of squared deviations ``M2``),
    which equals ``sq_mean - mean^2`` exactly in real arithmetic but does not cancel
    catastrophically in float32 when the weights are large relative to their spread.

    Args:
        dim: ``D``, the snapshot length (> 0).
        max_rank: ``K_max``, the number of most recent deviation columns kept (>= 1).
        dtype: floating dtype of the accumulators; snapshots are cast to it.
        device: device of the accumulators; snapshots are moved to it.
    """

    def __init__(
        self,
        dim: int,
        max_rank: int = 20,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"SWAG dim must be a positive integer, got {dim!r}")
        if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
            raise ConfigError(f"SWAG max_rank must be an integer >= 1, got {max_rank!r}")
        if not dtype.is_floating_point:
            raise ConfigError(f"SWAG dtype must be a floating-point dtype, got {dtype}")
        self.dim = dim
        self.max_rank = max_rank
        self._mean = torch.zeros(dim, dtype=dtype, device=device)
        self._m2 = torch.zeros(dim, dtype=dtype, device=device)
        self._ring = torch.zeros(dim, max_rank, dtype=dtype, device=device)
        self._n = 0

    @property
    def n_collected(self) -> int:
        """Number of snapshots collected so far."""
        return self._n

    @property
    def rank(self) -> int:
        """``K = min(n_collected, max_rank)``, the deviation columns currently held."""
        return min(self._n, self.max_rank)

    @property
    def mean(self) -> Tensor:
        """Running first moment, shape ``(D,)`` (a copy)."""
        return self._mean.clone()

    @property
    def sq_mean(self) -> Tensor:
        """Running second moment ``mean(theta^2)``, shape ``(D,)``."""
        return self.diag_variance + self._mean**2

    @property
    def diag_variance(self) -> Tensor:
        """Per-weight (population) variance ``sq_mean - mean^2 >= 0``, shape ``(D,)``."""
        if self._n == 0:
            return torch.zeros_like(self._m2)
        return torch.clamp(self._m2 / self._n, min=0.0)

    @torch.no_grad()
    def collect(self, theta: Tensor) -> None:
        """Add one flat snapshot ``theta`` of shape ``(D,)`` (detached, copied, cast)."""
        if not isinstance(theta, Tensor) or theta.ndim != 1 or theta.shape[0] != self.dim:
            shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
            raise ConfigError(f"SWAG snapshot must be a flat vector of length {self.dim}, got {shape}")
        theta = theta.detach().to(device=self._mean.device, dtype=self._mean.dtype)
        n = self._n + 1
        delta = theta - self._mean
        self._mean.add_(delta / n)
        deviation = theta - self._mean  # against the mean *after* the update
        self._m2.add_(delta * deviation)
        self._ring[:, (n - 1) % self.max_rank].copy_(deviation)
        self._n = n

    def collect_module(self, model: nn.Module, groups: ParameterGroups) -> None:
        """:meth:`collect` the flattened body parameters of ``model`` (``groups.flat(..., "body")``)."""
        with torch.no_grad():
            self.collect(groups.flat(dict(model.named_parameters()), "body"))

    def deviations(self) -> Tensor:
        """The held deviation columns in chronological order (oldest first), shape ``(D, K)``."""
        if self._n <= self.max_rank:
            return self._ring[:, : self._n].clone()
        start = self._n % self.max_rank  # the oldest column, next to be overwritten
        return torch.cat([self._ring[:, start:], self._ring[:, :start]], dim=1)

    def moments(self) -> SWAGMoments:
        """Snapshot of the moments so far (copies); needs >= 2 collected snapshots."""
        if self._n < 2:
            raise ConfigError(f"SWAG needs at least 2 collected snapshots, got {self._n}")
        return SWAGMoments(
            mean=self._mean.clone(),
            diag_variance=self.diag_variance,
            deviations=self.deviations(),
            n_collected=self._n,
        )
