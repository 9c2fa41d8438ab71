"""CIFAR-10 as in-memory uint8 tensors (JPEG archive, ImageFolder or torchvision) and GPU-side augmentation."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import tarfile
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from optuna_deelbo._errors import ConfigError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DeviceAugment",
    "default_cache_dir",
    "load_cifar10_jpeg",
    "load_cifar10_torchvision",
    "split_classes",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""Class names in torchvision's order; a label is an index into this tuple."""

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
"""Per-channel (R, G, B) mean of the original CIFAR-10 training pixels scaled to [0, 1]."""

CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
"""Per-channel (R, G, B) standard deviation of the original CIFAR-10 training pixels scaled to [0, 1]."""

_SPLITS = ("train", "test")
_SIDE = 32
_CACHE_VERSION = 1
_CLASS_INDEX = {name: i for i, name in enumerate(CIFAR10_CLASSES)}


def _check_split(split: object) -> str:
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    return str(split)


def default_cache_dir() -> Path:
    """``$OPTUNA_DEELBO_CACHE`` if set, else ``~/.cache/optuna-deelbo``."""
    env = os.environ.get("OPTUNA_DEELBO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "optuna-deelbo"


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """One image file's bytes as a ``(3, 32, 32)`` uint8 array; ``name`` is used in error messages."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size = image.mode, image.size
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ConfigError(f"cannot decode image {name}: {exc}") from exc
    if mode != "RGB" or size != (_SIDE, _SIDE):
        raise ConfigError(
            f"image {name} is {mode} {size[0]}x{size[1]}; CIFAR-10 images must be 32x32 RGB "
            "(grayscale or resized images are rejected, not converted)"
        )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _label_of(class_name: str, where: str) -> int:
    if class_name not in _CLASS_INDEX:
        raise ConfigError(
            f"unknown class folder {class_name!r} in {where}; expected one of {', '.join(CIFAR10_CLASSES)}"
        )
    return _CLASS_INDEX[class_name]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _archive_items(archive: Path, split: str) -> Iterator[tuple[int, str, bytes]]:
    """``(label, filename, bytes)`` for each ``{split}/<class>/<file>`` member, streamed in archive order."""
    with tarfile.open(archive, "r|xz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or parts[0] != split or any(_is_hidden(p) for p in parts):
                continue
            label = _label_of(parts[1], str(archive))
            if len(parts) != 3 or not member.isfile():
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            yield label, parts[2], handle.read()


def _decode_archive(archive: Path, split: str) -> list[tuple[int, str, np.ndarray]]:
    items: list[tuple[int, str, np.ndarray]] = []
    try:
        for label, filename, data in _archive_items(archive, split):
            member = f"{split}/{CIFAR10_CLASSES[label]}/{filename}"
            items.append((label, filename, _decode_image(data, f"{member} in {archive}")))
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise ConfigError(f"cannot read CIFAR-10 archive {archive} (corrupt or not a .tar.xz file): {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read CIFAR-10 archive {archive}: {exc}") from exc
    return items


def _folder_files(folder: Path) -> list[tuple[int, Path]]:
    """``(label, path)`` of each non-hidden file in ``folder/<class>/``; unknown class folders are an error."""
    files: list[tuple[int, Path]] = []
    for class_dir in sorted(folder.iterdir()):
        if _is_hidden(class_dir.name) or not class_dir.is_dir():
            continue
        label = _label_of(class_dir.name, str(folder))
        files.extend((label, path) for path in class_dir.iterdir() if path.is_file() and not _is_hidden(path.name))
    return files


def _decode_folder(folder: Path) -> list[tuple[int, str, np.ndarray]]:
    items: list[tuple[int, str, np.ndarray]] = []
    for label, path in _folder_files(folder):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read image {path}: {exc}") from exc
        items.append((label, path.name, _decode_image(data, str(path))))
    return items


def _source_key(source: Path, split: str) -> str:
    """A digest of the source's resolved path, size and mtime (every file's, for a folder)."""
    digest = hashlib.sha256(f"cifar10-jpeg v{_CACHE_VERSION} {split} {source.resolve()}".encode())
    if source.is_dir():
        for label, path in sorted(_folder_files(source), key=lambda item: str(item[1])):
            stat = path.stat()
            digest.update(f"\n{label} {path.relative_to(source)} {stat.st_size} {stat.st_mtime_ns}".encode())
    else:
        stat = source.stat()
        digest.update(f"\n{stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as cached:
            images, labels = cached["images"], cached["labels"]
    except (OSError, KeyError, ValueError, EOFError):
        return None
    n = images.shape[0] if images.ndim == 4 else -1
    if images.dtype != np.uint8 or images.shape[1:] != (3, _SIDE, _SIDE) or labels.shape != (n,):
        return None
    return images, labels.astype(np.int64, copy=False)


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write atomically (temporary file, then rename); warn instead of failing if the directory is unwritable."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as handle:
            tmp = Path(handle.name)
            np.savez(handle, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the CIFAR-10 cache {path}: {exc}", RuntimeWarning, stacklevel=3)


def load_cifar10_jpeg(
    data_dir: str | os.PathLike[str],
    split: str = "train",
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 (JPEG) images and labels, decoded once with Pillow and cached as ``.npz``.

    The source is ``data_dir/cifar10-{split}-jpeg.tar.xz`` (streamed, never extracted to disk) or, if
    there is no archive, an extracted ImageFolder ``data_dir/{split}/<class>/*.jpg``. Images are sorted
    by (class index, file name). The decoded arrays are cached in ``cache_dir`` (default
    :func:`default_cache_dir`) under a key made of the source's path, size and mtime, so a changed
    archive or folder is decoded again.

    Args:
        data_dir: folder holding the archive or the extracted ``{split}/`` folder.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
        cache_dir: where to keep the decoded ``.npz``.

    Returns:
        ``(images, labels)``: ``(N, 3, 32, 32)`` uint8 RGB pixels in [0, 255] and ``(N,)`` int64
        indices into :data:`CIFAR10_CLASSES`.
    """
    split = _check_split(split)
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise ConfigError(f"CIFAR-10 data directory {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"CIFAR-10 data directory {root} is not a directory")
    archive, folder = root / f"cifar10-{split}-jpeg.tar.xz", root / split
    if archive.is_file():
        source = archive
    elif folder.is_dir():
        source = folder
    else:
        raise ConfigError(
            f"no CIFAR-10 {split} data in {root}: looked for the archive {archive.name} "
            f"and the ImageFolder directory {split}/<class>/*.jpg"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"cifar10-jpeg-{split}-{_source_key(source, split)}.npz"
    cached = _read_cache(cache_file) if cache_file.is_file() else None
    if cached is not None:
        images, labels = cached
    else:
        items = _decode_archive(source, split) if source is archive else _decode_folder(source)
        if not items:
            raise ConfigError(f"no images found in {source} (expected {split}/<class>/*.jpg)")
        items.sort(key=lambda item: (item[0], item[1]))
        images = np.stack([item[2] for item in items])
        labels = np.array([item[0] for item in items], dtype=np.int64)
        _write_cache(cache_file, images, labels)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_cifar10_torchvision(
    root: str | os.PathLike[str],
    split: str = "train",
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """The original CIFAR-10 through ``torchvision.datasets.CIFAR10`` (python-pickle batches under ``root``).

    Args:
        root: folder that holds (or, with ``download=True``, will hold) ``cifar-10-batches-py``.
        split: ``"train"`` or ``"test"``.
        download: fetch the 163 MB archive from the internet if it is missing.

    Returns:
        ``(images, labels)``: ``(N, 3, 32, 32)`` uint8 and ``(N,)`` int64, as :func:`load_cifar10_jpeg`.
    """
    from torchvision.datasets import CIFAR10

    split = _check_split(split)
    try:
        dataset = CIFAR10(str(Path(root).expanduser()), train=split == "train", download=bool(download))
    except RuntimeError as exc:
        if "not found" not in str(exc):
            raise
        hint = (
            "the download did not verify"
            if download
            else "pass download=True to fetch it (the CLI: --dataset cifar10-jpeg --data-dir with the offline archives)"
        )
        raise ConfigError(
            f"CIFAR-10 not found (or corrupted) under {root}: {hint}, "
            "or use load_cifar10_jpeg with the offline JPEG archive"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"could not download CIFAR-10 to {root}: {exc}; use load_cifar10_jpeg with the offline JPEG archive"
        ) from exc
    if tuple(dataset.classes) != CIFAR10_CLASSES:
        raise ConfigError(f"unexpected CIFAR-10 class names under {root}: {dataset.classes}")
    images = torch.from_numpy(np.ascontiguousarray(np.asarray(dataset.data, dtype=np.uint8).transpose(0, 3, 1, 2)))
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def split_classes(images: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The examples of ``classes`` only, relabelled ``0..k-1`` in the order given (order of rows kept).

    Split-CIFAR uses ``classes=(0, 1, 2, 3, 4)`` as the source task and ``(5, 6, 7, 8, 9)`` as the target.

    Args:
        images: ``(N, ...)`` tensor.
        labels: ``(N,)`` integer class indices.
        classes: distinct class indices to keep; each must occur in ``labels``.

    Returns:
        ``(images[keep], new_labels)`` with ``new_labels`` int64 in ``0..len(classes)-1``.
    """
    if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ConfigError(f"images has {images.shape[0]} rows but labels has shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices, got {labels.dtype}")
    wanted = list(classes)
    if not wanted:
        raise ConfigError("classes must name at least one class index")
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in wanted):
        raise ConfigError(f"classes must be non-negative integer class indices, got {tuple(classes)}")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"classes must be distinct, got {tuple(classes)}")
    labels = labels.long()
    size = max(max(wanted), int(labels.max().item()) if labels.numel() else 0) + 1
    lookup = torch.full((size,), -1, dtype=torch.int64, device=labels.device)
    lookup[torch.as_tensor(wanted, dtype=torch.int64, device=labels.device)] = torch.arange(
        len(wanted), device=labels.device
    )
    new_labels = lookup[labels] if labels.numel() else labels
    keep = new_labels >= 0
    counts = torch.bincount(new_labels[keep], minlength=len(wanted))
    missing = [c for c, n in zip(wanted, counts.tolist(), strict=True) if n == 0]
    if missing:
        raise ConfigError(f"classes {missing} have no examples in labels")
    return images[keep], new_labels[keep]


class DeviceAugment:
    """Normalise (and, for training, randomly crop and flip) a uint8 image batch on its own device.

    Training mode is the standard CIFAR recipe, vectorised over the batch (no per-image loop): pad
    each image by ``padding`` pixels of raw zeros (black, as ``torchvision.transforms.RandomCrop(32,
    padding=4)`` on uint8 images; after normalisation the padding reads ``-mean / std``), take a
    random ``H x W`` crop, mirror it left-right with probability 1/2, then normalise.

    Args:
        train: apply random crop and flip; if False only normalise.
        padding: zero padding in pixels on every side for the random crop (``0`` disables cropping).
        flip: apply random horizontal flips in training mode.
        mean: per-channel mean for pixels scaled to [0, 1].
        std: per-channel standard deviation for pixels scaled to [0, 1].
        channels_last: return ``torch.channels_last`` memory format.
        generator: random source for crops and flips; must live on the batch's device.
    """

    def __init__(
        self,
        train: bool = False,
        *,
        padding: int = 4,
        flip: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ConfigError(f"padding must be a non-negative integer, got {padding!r}")
        if len(mean) != len(std) or not mean:
            raise ConfigError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ConfigError(f"std must be positive, got {tuple(std)}")
        self.train = bool(train)
        self.padding = padding
        self.flip = bool(flip)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.channels_last = bool(channels_last)
        self.generator = generator
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._stats:
            shape = (1, len(self.mean), 1, 1)
            self._stats[device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape),
                torch.tensor(self.std, dtype=torch.float32, device=device).view(shape),
            )
        return self._stats[device]

    def pad_value(self, device: torch.device | str = "cpu") -> Tensor:
        """The normalised value of a padding pixel, ``-mean / std``, as a ``(1, C, 1, 1)`` float32 tensor."""
        mean, std = self._mean_std(torch.device(device))
        return (0.0 - mean) / std

    def _crop_flip(self, x: Tensor) -> Tensor:
        """Random crops (offsets in ``[0, 2 * padding]``) and flips of ``x`` by one advanced-indexing gather."""
        b, c, h, w = x.shape
        p, device, gen = self.padding, x.device, self.generator
        if gen is not None and gen.device.type != device.type:
            raise ConfigError(f"the generator lives on {gen.device} but the batch is on {device}")
        padded = x.new_zeros((b, c, h + 2 * p, w + 2 * p))
        padded[:, :, p : p + h, p : p + w] = x
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen, device=device)
        cols = torch.arange(w, device=device).expand(b, w)
        if self.flip:
            mirror = torch.rand(b, generator=gen, device=device) < 0.5
            cols = torch.where(mirror[:, None], w - 1 - cols, cols)
        rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
        cols = dx[:, None] + cols  # (B, W)
        batch = torch.arange(b, device=device).view(b, 1, 1, 1)
        channel = torch.arange(c, device=device).view(1, c, 1, 1)
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` uint8 pixels in [0, 255] to ``(B, C, H, W)`` float32 normalised images, same device."""
        if images.dtype != torch.uint8:
            raise ConfigError(f"DeviceAugment expects uint8 pixels, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != len(self.mean):
            raise ConfigError(f"expected a (B, {len(self.mean)}, H, W) batch, got shape {tuple(images.shape)}")
        if self.train and images.shape[0] > 0:
            images = self._crop_flip(images)
        mean, std = self._mean_std(images.device)
        out = (images.to(torch.float32) / 255 - mean) / std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
