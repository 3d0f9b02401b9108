"""CIFAR-10 in the official binary layout: loading, download with md5 check, and on-device
augmentation (random crop with 4 pixels of padding, horizontal flip) as batched tensor ops."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from .errors import ShiftPQError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
RECORD = 1 + 3 * 32 * 32
RECORDS_PER_FILE = 10_000  # every official .bin file, train and test
PAD = 4  # random-crop padding, pixels
PAD_VALUE = 128  # the centered input's zero (see models.preprocess)


def default_data_dir() -> str | None:
    return os.environ.get("CIFAR10_DIR")


def resolve_data_dir(data_dir: str | None) -> Path:
    d = data_dir or default_data_dir()
    if not d:
        raise ShiftPQError("no CIFAR-10 directory: pass --data-dir or set CIFAR10_DIR "
                           "(or fetch it with `shiftpq data download --out DIR`)")
    p = Path(d)
    if not p.is_dir():
        raise ShiftPQError(f"CIFAR-10 directory {str(p)!r} does not exist "
                           "(expected the official binary files data_batch_1.bin .. test_batch.bin)")
    return p


def read_batch_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official .bin file -> (uint8 images N x 3 x 32 x 32, int64 labels N)."""
    if not path.is_file():
        raise ShiftPQError(f"{path}: missing CIFAR-10 file (expected the official binary layout)")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ShiftPQError(f"{path}: size {raw.size} bytes is not a positive multiple of the "
                           f"{RECORD}-byte CIFAR-10 record")
    raw = raw.reshape(-1, RECORD)
    labels = raw[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ShiftPQError(f"{path}: label byte {int(labels.max())} outside 0..9")
    return raw[:, 1:].reshape(-1, 3, 32, 32), labels


def load_split(data_dir: str | Path | None, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``train`` (50,000) or ``test`` (10,000) split as (uint8 images, int64 labels) tensors."""
    root = resolve_data_dir(str(data_dir) if data_dir else None)
    files = {"train": TRAIN_FILES, "test": TEST_FILES}[split]
    images, labels = [], []
    have = 0
    for name in files:
        x, y = read_batch_file(root / name)
        # a cut file would be evaluated as if complete: a subset is asked for with a limit, never implied
        need = RECORDS_PER_FILE if limit is None else min(RECORDS_PER_FILE, limit - have)
        if len(y) < need or len(y) > RECORDS_PER_FILE:
            raise ShiftPQError(f"{root / name}: {len(y)} records, expected {RECORDS_PER_FILE} (the official "
                               f"CIFAR-10 file; a truncated or altered copy?)"
                               + ("" if limit is None else f"; --limit {limit} needs {need} of them"))
        images.append(x)
        labels.append(y)
        have += len(y)
        if limit is not None and have >= limit:
            break
    x, y = np.concatenate(images), np.concatenate(labels)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def augment(images: torch.Tensor, generator: torch.Generator, cutout: int = 0) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel padded image and random horizontal flip (uint8, on device);
    ``cutout`` > 0: then a square of that side, centred on a random pixel and clipped to the image,
    set to the padding value in every channel (Cutout, DeVries and Taylor 2017). Without cutout the
    generator draws exactly what it drew before the option existed."""
    n = images.shape[0]
    dev = images.device
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD), value=PAD_VALUE)
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    base = torch.arange(32, device=dev)
    rows = (dy[:, None] + base)[:, None, :, None]  # n,1,32,1
    cols = dx[:, None] + base
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # n,1,1,32
    idx = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(3, device=dev)[None, :, None, None]
    out = padded[idx, ch, rows, cols]
    if cutout:
        cy = torch.randint(0, 32, (n,), generator=generator, device=dev)[:, None, None, None]
        cx = torch.randint(0, 32, (n,), generator=generator, device=dev)[:, None, None, None]
        lo = cutout // 2
        inside = ((base[None, None, :, None] >= cy - lo) & (base[None, None, :, None] < cy - lo + cutout)
                  & (base[None, None, None, :] >= cx - lo) & (base[None, None, None, :] < cx - lo + cutout))
        out = out.masked_fill(inside, PAD_VALUE)
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(out: str | Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5, progress: bool = True) -> Path:
    """Fetch the official archive, check its md5, and unpack the .bin files into ``out``.

    Nothing is left at ``out`` unless every step succeeded (unpacked in a temporary directory
    beside it, then renamed).
    """
    out = Path(out)
    if out.exists() and all((out / f).is_file() for f in TRAIN_FILES + TEST_FILES):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".cifar10-") as tmp:
        archive = Path(tmp) / "cifar-10-binary.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0)
                from tqdm import tqdm
                with tqdm(total=total or None, unit="B", unit_scale=True, desc="CIFAR-10",
                          disable=not progress) as bar:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            raise ShiftPQError(f"download of {url} failed: {e}") from None
        got = _md5(archive)
        if got != md5:
            raise ShiftPQError(f"{url}: md5 {got} does not match the expected {md5}")
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        with tarfile.open(archive) as tar:
            for name in TRAIN_FILES + TEST_FILES:
                try:
                    member = tar.getmember(f"{ARCHIVE_DIR}/{name}")
                except KeyError:
                    raise ShiftPQError(f"{url}: archive has no {ARCHIVE_DIR}/{name}") from None
                with tar.extractfile(member) as src, open(unpacked / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                read_batch_file(unpacked / name)  # validates the record layout
        if out.exists():
            shutil.rmtree(out)
        os.replace(unpacked, out)
    return out
