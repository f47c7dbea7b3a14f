"""CIFAR-10's files on disk: where they are (``task.data_dir``, ``$TDABENCH_CIFAR10_DIR``, the archive, or
torchvision's download), their published checksums, and the pickled batches read into tensors."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

ENV_DIR = "TDABENCH_CIFAR10_DIR"
FOLDER = "cifar-10-batches-py"
ARCHIVE, ARCHIVE_MD5 = "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: The published md5 of every member of the archive (as listed by torchvision's CIFAR10 dataset).
MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
       "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
       "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
       "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_message(root: Path) -> str:
    return (f"CIFAR-10 not found under {root}. Put the 'cifar-10-python' files there as {root / FOLDER}/ "
            f"(data_batch_1..5, test_batch, batches.meta) or the archive {root / ARCHIVE} (from {URL}, md5 "
            f"{ARCHIVE_MD5}); or point task.data_dir=DIR / ${ENV_DIR} at the folder that holds them. "
            f"Automatic download needs torchvision and network access (task.download=true).")


def resolve_folder(data_dir: str, download: bool, verify: bool) -> Path:
    """The cifar-10-batches-py folder: given directly, inside ``data_dir``, extracted from the archive
    there, or downloaded by torchvision; otherwise a FileNotFoundError that says where to put it."""
    root = Path(data_dir or os.environ.get(ENV_DIR) or Path.home() / ".cache" / "tdabench" / "cifar10").expanduser()
    for folder in (root, root / FOLDER):
        if (folder / "test_batch").exists():
            return folder
    if (root / ARCHIVE).exists():
        if verify and md5(root / ARCHIVE) != ARCHIVE_MD5:
            raise ValueError(f"{root / ARCHIVE}: md5 differs from the published {ARCHIVE_MD5}; download it again")
        with tarfile.open(root / ARCHIVE) as tar:
            tar.extractall(root, filter="data")
        return root / FOLDER
    if download:
        try:
            import torchvision  # noqa: F401  (optional: only used to download)
            from torchvision.datasets import CIFAR10
            CIFAR10(str(root), train=False, download=True)
            return root / FOLDER
        except Exception as err:  # no torchvision or no network: say what to do instead
            raise FileNotFoundError(f"{missing_message(root)} (download failed: {type(err).__name__}: {err})") from None
    raise FileNotFoundError(missing_message(root))


def read_batches(folder: Path, names: tuple[str, ...], checksums: Optional[dict[str, str]],
                 classes: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """Images ``[n, 3, 32, 32]`` uint8 and labels ``[n]`` of the pickled batches ``names``, each file
    checked against ``checksums`` first (None: no check); with ``classes``, only those (``keep_classes``)."""
    xs, ys = [], []
    for name in names + ("batches.meta",):
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: {missing_message(folder.parent)}")
        if checksums is not None and md5(path) != checksums[name]:
            raise ValueError(f"{path}: md5 {md5(path)} differs from the published {checksums[name]}; the file is "
                             f"corrupt or not CIFAR-10 — download it again (or set task.verify=false for your own data)")
        if name == "batches.meta":
            continue
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = keep_classes(np.asarray(batch[b"data"]), np.asarray(batch[b"labels"]), classes)
        xs.append(torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32))
        ys.append(torch.as_tensor(labels, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def keep_classes(rows: np.ndarray, labels: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``classes`` only, their labels renumbered 0..C−1 in the order of ``classes`` (all rows
    when empty).  In NumPy, on the files' arrays: a planner's fake-tensor trace cannot take a shape that
    depends on the data."""
    if not classes:
        return rows, labels
    lookup = np.full(10, -1)
    lookup[list(classes)] = np.arange(len(classes))
    keep = lookup[labels] >= 0
    return rows[keep], lookup[labels[keep]]
