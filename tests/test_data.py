import hashlib
import io
import tarfile
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import numpy as np
import pytest
import torch

from shiftpq.data import ARCHIVE_DIR, RECORD, TEST_FILES, TRAIN_FILES, augment, download, load_split
from shiftpq.errors import ShiftPQError


def test_load_real_cifar10(cifar_dir):
    x, y = load_split(cifar_dir, "test")
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10
    x, y = load_split(cifar_dir, "train", limit=300)
    assert len(y) == 300


def test_augment_is_a_crop_of_the_padded_image_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = augment(x, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), value=128)
    for i in range(64):
        found = any(torch.equal(a[i], c) or torch.equal(a[i], c.flip(2))
                    for dy in range(9) for dx in range(9) for c in [padded[i, :, dy:dy + 32, dx:dx + 32]])
        assert found


def test_cutout_blanks_one_clipped_square_after_the_same_crop():
    """augment(cutout=8): the crop and flip drawn without cutout, then one square (side 8, clipped to the
    image, the same in every channel) set to the padding value; all-white images show it where it covers
    image rather than padding: one rectangle of at most 64 pixels."""
    x = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)
    plain = augment(x, torch.Generator().manual_seed(3))
    cut = augment(x, torch.Generator().manual_seed(3), cutout=8)
    blank = cut != plain
    assert torch.equal(blank[:, 0], blank[:, 1]) and torch.equal(blank[:, 0], blank[:, 2])
    assert (cut[blank] == 128).all()
    area = blank[:, 0].flatten(1).sum(1)
    assert int(area.max()) == 64 and int(area.min()) < 64 and (area > 0).float().mean() > 0.9
    rows, cols = blank[:, 0].any(2), blank[:, 0].any(1)  # one axis-aligned block: its rows x its columns
    assert torch.equal(area, rows.sum(1) * cols.sum(1))
    # without cutout nothing changed: the same images as before the option existed
    assert torch.equal(augment(x, torch.Generator().manual_seed(3), cutout=0), plain)


def _archive(records: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in TRAIN_FILES + TEST_FILES:
            data = rng.integers(0, 256, (records, RECORD), dtype=np.uint8)
            data[:, 0] %= 10
            info = tarfile.TarInfo(f"{ARCHIVE_DIR}/{name}")
            info.size = data.nbytes
            tar.addfile(info, io.BytesIO(data.tobytes()))
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "cifar-10-binary.tar.gz").write_bytes(_archive())
    httpd = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-binary.tar.gz", root
    httpd.shutdown()


def test_download_from_local_server(tmp_path, server):
    url, root = server
    md5 = hashlib.md5((root / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    out = download(tmp_path / "cifar", url, md5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(TRAIN_FILES + TEST_FILES)
    x, y = load_split(out, "train", limit=3)  # 3-record files: a subset only through the limit
    assert x.shape == (3, 3, 32, 32)
    with pytest.raises(ShiftPQError, match="data_batch_1.bin: 3 records, expected 10000"):
        load_split(out, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "www"]  # no temporary leftovers


def test_download_md5_mismatch_leaves_nothing(tmp_path, server):
    url, _ = server
    with pytest.raises(ShiftPQError, match="md5"):
        download(tmp_path / "cifar", url, "0" * 32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["www"]


def test_download_unreachable_is_a_clear_error(tmp_path, server):
    url, _ = server
    with pytest.raises(ShiftPQError, match="download of .* failed"):
        download(tmp_path / "cifar", url.replace("cifar-10", "nothing"), "0" * 32, progress=False)


def test_bad_batch_file_is_named(tmp_path):
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ShiftPQError, match="test_batch.bin: size 100"):
        load_split(tmp_path, "test")
    with pytest.raises(ShiftPQError, match="data_batch_1.bin: missing"):
        load_split(tmp_path, "train")
