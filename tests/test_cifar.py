"""CIFAR-10 loading (JPEG archive, ImageFolder, torchvision pickles), class splits and on-device augmentation."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR_DATA_DIR
from PIL import Image

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.data import _cifar as cifar
from optuna_deelbo.data._cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DeviceAugment,
    load_cifar10_jpeg,
    load_cifar10_torchvision,
    split_classes,
)

SHARED_DATA = CIFAR_DATA_DIR
REAL_TEST_ARCHIVE = SHARED_DATA / "cifar10-test-jpeg.tar.xz"
needs_real_data = pytest.mark.skipif(
    not REAL_TEST_ARCHIVE.is_file(),
    reason=f"the real CIFAR-10 JPEG archive is not at {REAL_TEST_ARCHIVE} (shared/data next to the repository)",
)
PER_CLASS = 3


class DecoderCalled(Exception):
    """Raised by a stubbed decoder to prove that the cache was (or was not) used."""


def _jpeg(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    """A synthetic JPEG file's bytes."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def _pillow_chw(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).transpose(2, 0, 1)


def _write_archive(path: Path, files: dict[str, bytes]) -> None:
    """An .tar.xz holding ``files`` (archive name -> bytes), with directory entries like the real archives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as tar:
        dirs = sorted({str(Path(name).parent) for name in files} | {name.split("/")[0] for name in files})
        for directory in dirs:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _write_folder(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@pytest.fixture(scope="module")
def real_files() -> dict[str, bytes]:
    """The first ``PER_CLASS`` JPEGs of every class in the real test archive, keyed ``test/<class>/<file>``."""
    if not REAL_TEST_ARCHIVE.is_file():
        pytest.skip(f"the real CIFAR-10 JPEG archive is not at {REAL_TEST_ARCHIVE}")
    files: dict[str, bytes] = {}
    counts = dict.fromkeys(CIFAR10_CLASSES, 0)
    with tarfile.open(REAL_TEST_ARCHIVE, "r|xz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and counts[parts[1]] < PER_CLASS:
                handle = tar.extractfile(member)
                assert handle is not None
                files[member.name] = handle.read()
                counts[parts[1]] += 1
    assert set(counts.values()) == {PER_CLASS}
    return files


def _expected(files: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's own decode of ``files`` in (class index, file name) order, and the labels."""
    order = sorted(files, key=lambda name: (CIFAR10_CLASSES.index(name.split("/")[1]), name.split("/")[2]))
    images = np.stack([_pillow_chw(files[name]) for name in order])
    labels = np.array([CIFAR10_CLASSES.index(name.split("/")[1]) for name in order])
    return images, labels


def test_class_order_is_torchvision() -> None:
    assert CIFAR10_CLASSES == (
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


def test_archive_decodes_sorts_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_files: dict[str, bytes]
) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    archive = data / "cifar10-test-jpeg.tar.xz"
    _write_archive(archive, dict(reversed(list(real_files.items()))))  # reversed: the loader must sort
    images, labels = load_cifar10_jpeg(data, "test", cache_dir=cache)
    assert images.shape == (10 * PER_CLASS, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.tolist() == [k for k in range(10) for _ in range(PER_CLASS)]
    expected_images, expected_labels = _expected(real_files)
    np.testing.assert_array_equal(images.numpy(), expected_images)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    assert len(list(cache.glob("*.npz"))) == 1

    def stub(data: bytes, name: str) -> np.ndarray:
        raise DecoderCalled(name)

    monkeypatch.setattr(cifar, "_decode_image", stub)
    again, again_labels = load_cifar10_jpeg(data, "test", cache_dir=cache)  # served from the cache
    assert torch.equal(again, images) and torch.equal(again_labels, labels)

    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer mtime
    with pytest.raises(DecoderCalled):
        load_cifar10_jpeg(data, "test", cache_dir=cache)
    monkeypatch.undo()

    fewer = {name: blob for name, blob in real_files.items() if not name.endswith("0002.jpg")}
    _write_archive(archive, fewer)
    images2, labels2 = load_cifar10_jpeg(data, "test", cache_dir=cache)
    assert images2.shape[0] == 20 and labels2.bincount().tolist() == [2] * 10
    np.testing.assert_array_equal(images2.numpy(), _expected(fewer)[0])


def test_default_cache_dir_follows_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_files: dict[str, bytes]
) -> None:
    _write_archive(tmp_path / "data" / "cifar10-test-jpeg.tar.xz", real_files)
    monkeypatch.setenv("OPTUNA_DEELBO_CACHE", str(tmp_path / "env-cache"))
    load_cifar10_jpeg(tmp_path / "data", "test")
    assert len(list((tmp_path / "env-cache").glob("cifar10-jpeg-test-*.npz"))) == 1


def test_image_folder_matches_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_files: dict[str, bytes]
) -> None:
    folder_root, cache = tmp_path / "folder", tmp_path / "cache"
    _write_folder(folder_root, real_files)
    (folder_root / "test" / "cat" / ".DS_Store").write_bytes(b"junk a file manager left behind")
    images, labels = load_cifar10_jpeg(str(folder_root), "test", cache_dir=cache)
    expected_images, expected_labels = _expected(real_files)
    np.testing.assert_array_equal(images.numpy(), expected_images)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)

    def stub(data: bytes, name: str) -> np.ndarray:
        raise DecoderCalled(name)

    monkeypatch.setattr(cifar, "_decode_image", stub)
    assert torch.equal(load_cifar10_jpeg(folder_root, "test", cache_dir=cache)[0], images)
    monkeypatch.undo()

    # Replace one file inside a class folder: the folder's key covers every file, so it is decoded again.
    first = folder_root / "test" / "airplane" / "0000.jpg"
    truck = real_files["test/truck/0000.jpg"]
    first.write_bytes(truck)
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    changed, _ = load_cifar10_jpeg(folder_root, "test", cache_dir=cache)
    np.testing.assert_array_equal(changed[0].numpy(), _pillow_chw(truck))
    assert not torch.equal(changed[0], images[0])


@needs_real_data
def test_real_test_archive(tmp_path: Path, real_files: dict[str, bytes]) -> None:
    images, labels = load_cifar10_jpeg(SHARED_DATA, "test", cache_dir=tmp_path)
    assert images.shape == (10_000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.bincount(minlength=10).tolist() == [1000] * 10
    assert bool((labels[1:] >= labels[:-1]).all())
    np.testing.assert_array_equal(images[0].numpy(), _pillow_chw(real_files["test/airplane/0000.jpg"]))
    np.testing.assert_array_equal(images[9000].numpy(), _pillow_chw(real_files["test/truck/0000.jpg"]))
    assert 100 < images.float().mean().item() < 140  # real photographs, not blank images


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data directory .*nowhere does not exist"):
        load_cifar10_jpeg(tmp_path / "nowhere", "test", cache_dir=tmp_path)


def test_neither_archive_nor_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()  # the other split's folder does not count
    with pytest.raises(ConfigError, match=r"looked for the archive cifar10-test-jpeg\.tar\.xz and .*test/<class>"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_corrupt_archive(tmp_path: Path) -> None:
    archive = tmp_path / "cifar10-test-jpeg.tar.xz"
    archive.write_bytes(b"this is not an xz-compressed tar file" * 10)
    with pytest.raises(ConfigError, match=r"cannot read CIFAR-10 archive .*cifar10-test-jpeg\.tar\.xz"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_truncated_archive(tmp_path: Path) -> None:
    files = {f"test/{name}/{i:04d}.jpg": _jpeg(10 * k + i) for k, name in enumerate(CIFAR10_CLASSES) for i in range(2)}
    _write_archive(tmp_path / "full" / "cifar10-test-jpeg.tar.xz", files)
    whole = (tmp_path / "full" / "cifar10-test-jpeg.tar.xz").read_bytes()
    (tmp_path / "cifar10-test-jpeg.tar.xz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=r"cannot read CIFAR-10 archive .*cifar10-test-jpeg\.tar\.xz"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_bad_split(tmp_path: Path, split: str) -> None:
    with pytest.raises(ConfigError, match=r"split must be 'train' or 'test'"):
        load_cifar10_jpeg(tmp_path, split, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"split must be 'train' or 'test'"):
        load_cifar10_torchvision(tmp_path, split)


def test_undecodable_member(tmp_path: Path) -> None:
    files = {"test/airplane/0000.jpg": _jpeg(0), "test/cat/0007.jpg": b"\xff\xd8 truncated jpeg"}
    _write_archive(tmp_path / "cifar10-test-jpeg.tar.xz", files)
    with pytest.raises(ConfigError, match=r"cannot decode image test/cat/0007\.jpg in .*cifar10-test-jpeg"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_unknown_class_folder(tmp_path: Path, layout: str) -> None:
    files = {"test/airplane/0000.jpg": _jpeg(0), "test/zebra/0000.jpg": _jpeg(1)}
    if layout == "archive":
        _write_archive(tmp_path / "cifar10-test-jpeg.tar.xz", files)
    else:
        _write_folder(tmp_path, files)
    with pytest.raises(ConfigError, match=r"unknown class folder 'zebra'.*airplane, automobile"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("blob", "described"),
    [(_jpeg(0, mode="L"), "L 32x32"), (_jpeg(0, size=(64, 32)), "RGB 64x32")],
    ids=["grayscale", "wrong-size"],
)
def test_rejects_non_cifar_images(tmp_path: Path, blob: bytes, described: str) -> None:
    _write_folder(tmp_path, {"test/dog/0000.jpg": _jpeg(5), "test/dog/0001.jpg": blob})
    with pytest.raises(ConfigError, match=rf"image .*0001\.jpg is {described}; CIFAR-10 images must be 32x32 RGB"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_archive_without_this_split(tmp_path: Path) -> None:
    _write_archive(tmp_path / "cifar10-test-jpeg.tar.xz", {"train/cat/0000.jpg": _jpeg(0)})
    with pytest.raises(ConfigError, match=r"no images found in .*cifar10-test-jpeg\.tar\.xz"):
        load_cifar10_jpeg(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_split_classes_relabels_in_given_order() -> None:
    labels = torch.tensor([3, 5, 9, 5, 0, 7, 9])
    images = torch.arange(7).view(7, 1, 1, 1).expand(7, 3, 2, 2)
    kept, new = split_classes(images, labels, (5, 9, 7))
    assert kept[:, 0, 0, 0].tolist() == [1, 2, 3, 5, 6]
    assert new.tolist() == [0, 1, 0, 2, 1] and new.dtype == torch.int64
    assert split_classes(images, labels, range(0, 4, 3))[1].tolist() == [1, 0]  # rows 0 (class 3) and 4 (class 0)


@pytest.mark.parametrize(
    ("classes", "message"),
    [((), "at least one"), ((5, 5), "distinct"), ((5, 8), r"classes \[8\] have no examples"), ((-1,), "non-negative")],
)
def test_split_classes_errors(classes: tuple[int, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_classes(torch.zeros(3, 3, 2, 2), torch.tensor([5, 6, 5]), classes)


def _batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random uint8 images in [1, 255], so a zero can only come from padding."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _stats() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


def test_eval_mode_only_normalises() -> None:
    x = _batch()
    mean, std = _stats()
    out = DeviceAugment(train=False)(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, (x.float() / 255 - mean) / std)


def test_train_mode_is_seeded() -> None:
    x = _batch()

    def run(seed: int) -> torch.Tensor:
        return DeviceAugment(train=True, generator=torch.Generator().manual_seed(seed))(x)

    first = run(0)
    assert first.shape == x.shape and first.dtype == torch.float32
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))


def test_train_mode_is_random_crop_and_flip_of_zero_padded_image() -> None:
    x = _batch()
    mean, std = _stats()
    out = DeviceAugment(train=True, generator=torch.Generator().manual_seed(3))(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # raw zeros (black), as documented
    normalised = (padded.float() / 255 - mean) / std
    windows = normalised.unfold(2, 32, 1).unfold(3, 32, 1)  # (B, 3, 9, 9, 32, 32): every 32x32 crop
    plain = (windows == out[:, :, None, None]).all(dim=1).flatten(-2).all(-1)  # (B, 9, 9)
    mirrored = (windows.flip(-1) == out[:, :, None, None]).all(dim=1).flatten(-2).all(-1)
    assert bool((plain | mirrored).flatten(1).any(1).all()), "every output is a (mirrored) crop of its padded input"
    is_flipped = mirrored.flatten(1).any(1)
    assert 0 < int(is_flipped.sum()) < x.shape[0], "some but not all samples are flipped"
    offsets = torch.nonzero(plain | mirrored)  # rows (sample, dy, dx); pad 4 allows dy, dx in 0..8
    assert offsets.shape[0] == x.shape[0], "each output matches exactly one crop"
    assert len(set(offsets[:, 1].tolist())) >= 5 and len(set(offsets[:, 2].tolist())) >= 5, "shifts vary both ways"

    # One sample by hand: find its offset, then rebuild it with plain slicing and torch.flip.
    b = int(torch.nonzero(is_flipped & ~mirrored[:, 4, 4])[0])
    dy, dx = (int(v) for v in torch.nonzero(mirrored[b])[0])
    manual = torch.flip(padded[b, :, dy : dy + 32, dx : dx + 32], dims=[-1])
    assert torch.equal(out[b], ((manual.float() / 255 - mean[0]) / std[0]))

    lowest, highest = (0 - mean) / std, (1 - mean) / std
    assert bool((out >= lowest).all()) and bool((out <= highest).all())
    pad_value = DeviceAugment().pad_value()
    assert torch.equal(pad_value, lowest)
    assert bool((out == pad_value).all(dim=1).any()), "shifted crops show the zero padding (-mean/std)"


def test_channels_last_and_bad_input() -> None:
    x = _batch(8)
    out = DeviceAugment(train=True, channels_last=True, generator=torch.Generator().manual_seed(0))(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    same = DeviceAugment(train=True, generator=torch.Generator().manual_seed(0))(x)
    assert torch.equal(out, same)
    with pytest.raises(ConfigError, match="expects uint8"):
        DeviceAugment()(x.float())
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        DeviceAugment()(x[:, :1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_augment_on_cuda() -> None:
    x = _batch(256).cuda()
    mean, std = (s.cuda() for s in _stats())
    assert torch.equal(DeviceAugment()(x), (x.float() / 255 - mean) / std)
    out = DeviceAugment(train=True, generator=torch.Generator(device="cuda").manual_seed(0))(x)
    assert out.device == x.device and out.shape == x.shape
    again = DeviceAugment(train=True, generator=torch.Generator(device="cuda").manual_seed(0))(x)
    assert torch.equal(out, again)
    with pytest.raises(ConfigError, match="generator lives on cpu"):
        DeviceAugment(train=True, generator=torch.Generator())(x)


def test_torchvision_missing_root_asks_for_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"download=True.*load_cifar10_jpeg"):
        load_cifar10_torchvision(tmp_path / "missing", "test")
    assert not (tmp_path / "missing" / "cifar-10-batches-py").exists(), "nothing was downloaded"


def _write_torchvision_batches(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Five tiny training batches and a test batch in torchvision's python-pickle layout."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    train_labels = [int(v) for v in rng.integers(0, 10, 10)]
    test = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    test_labels = [7, 0, 9]
    for k in range(5):
        rows = slice(2 * k, 2 * k + 2)
        batch = {"data": train[rows].reshape(2, 3072), "labels": train_labels[rows]}
        (folder / f"data_batch_{k + 1}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": test.reshape(3, 3072), "labels": test_labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return train, train_labels, test, test_labels


def test_torchvision_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    train, train_labels, test, test_labels = _write_torchvision_batches(tmp_path)
    # Our fake batches cannot match torchvision's md5 sums of the real files:
    with pytest.raises(ConfigError, match="not found"):
        load_cifar10_torchvision(tmp_path, "train")
    # torchvision checks the md5 of every batch (CIFAR10._check_integrity) and of batches.meta (_load_meta),
    # both through the module-level check_integrity, so patch that one function to only require the file.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    images, labels = load_cifar10_torchvision(tmp_path, "train")
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.uint8 and images.is_contiguous()
    np.testing.assert_array_equal(images.numpy(), train)
    assert labels.dtype == torch.int64 and labels.tolist() == train_labels
    images, labels = load_cifar10_torchvision(tmp_path, "test")
    np.testing.assert_array_equal(images.numpy(), test)
    assert labels.tolist() == test_labels
