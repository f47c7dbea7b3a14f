"""The cifar10 task on a small generated dataset in the real on-disk format (pickled batches)."""
from __future__ import annotations

import hashlib
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tdabench.engine.pipeline import evaluate as run
from tdabench.engine.spec import RunSpec
from tdabench.tasks.cifar10 import (
    MD5, Cifar10, Cifar10Config, augment, normalize, read_batches, resolve_folder, whitening_filters,
)

NAMES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def write_cifar(root: Path, per_batch: int = 80, seed: int = 0) -> dict[str, np.ndarray]:
    """Six pickled batches + batches.meta under root/cifar-10-batches-py, as the real archive has
    them; images are smooth class prototypes plus noise, so a small network can learn them."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    coarse = rng.uniform(0, 255, (10, 3, 4, 4))
    protos = coarse.repeat(8, axis=2).repeat(8, axis=3)                      # shape: [10, 3, 32, 32]
    written = {}
    for name in NAMES:
        labels = rng.integers(0, 10, per_batch)
        images = np.clip(protos[labels] + rng.normal(0, 40, (per_batch, 3, 32, 32)), 0, 255).astype(np.uint8)
        data = images.reshape(per_batch, 3072)                               # the archive's row layout
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f)
        written[name] = images
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_cases_per_batch": per_batch,
                     b"num_vis": 3072}, f)
    return written


def md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_loader_reads_the_pickled_layout_and_checks_checksums(tmp_path):
    written = write_cifar(tmp_path, per_batch=20)
    folder = resolve_folder(str(tmp_path), download=False, verify=True)
    x, y = read_batches(folder, NAMES[:5], md5s(folder))
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (100,)
    assert torch.equal(x[20:40], torch.as_tensor(written["data_batch_2"]))   # order and CHW layout kept
    expected = md5s(folder)
    with open(folder / "data_batch_3", "r+b") as f:                          # one flipped byte
        f.seek(500)
        byte = f.read(1)
        f.seek(500)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="data_batch_3: md5 .* differs"):
        read_batches(folder, NAMES[:5], expected)
    with pytest.raises(ValueError, match="published c99cafc152244af753f735de768cd75f"):
        read_batches(folder, NAMES[:1], MD5)                                 # not the real CIFAR-10


def test_archive_is_checked_then_extracted(tmp_path):
    written = write_cifar(tmp_path / "src", per_batch=10)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(ValueError, match="c58f30108f718f92721af3b95e74349a"):
        resolve_folder(str(tmp_path), download=False, verify=True)           # not the published archive
    folder = resolve_folder(str(tmp_path), download=False, verify=False)
    x, _ = read_batches(folder, ("test_batch",), None)
    assert torch.equal(x, torch.as_tensor(written["test_batch"]))


def test_missing_data_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TDABENCH_CIFAR10_DIR", str(tmp_path / "nowhere"))
    task = Cifar10(Cifar10Config(download=False))
    with pytest.raises(FileNotFoundError) as err:
        task.train_data()
    message = str(err.value)
    for needle in ("nowhere/cifar-10-batches-py", "cifar-10-python.tar.gz", "TDABENCH_CIFAR10_DIR", "task.data_dir"):
        assert needle in message


def test_augment_flips_and_translates_within_the_padding():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, flip=False, translate=0, gen=gen)
    assert torch.equal(out, x)
    seen = set()
    for _ in range(30):
        out = augment(x, flip=True, translate=1, gen=gen)
        for b in range(2):                                                   # each output: a shifted (flipped) crop
            centre = out[b, 0, 1:5, 1:5]
            ok = [(dr, dc, fl) for fl in (False, True) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                  if torch.equal(centre, (x[b, 0].flip(1) if fl else x[b, 0])[1 + dr : 5 + dr, 1 + dc : 5 + dc])]
            assert ok
            seen.add(ok[0])
    assert len(seen) > 9                                                     # shifts and flips both vary


def test_whitening_filters_whiten_the_patches():
    images = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    images[:, 1] = images[:, 0] // 2 + images[:, 1] // 2                   # correlated channels
    w = whitening_filters(images, eps=0.0)[:12]
    out = torch.nn.functional.conv2d(normalize(images), w).permute(1, 0, 2, 3).reshape(12, -1)
    cov = out @ out.T / out.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)


def test_tiny_run_through_ground_truth_and_gradsim_lds(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data")
    monkeypatch.setenv("TDABENCH_CIFAR10_DIR", str(tmp_path / "data"))
    task_set = {"verify": "false", "download": "false", "n_train": "200", "warmup_size": "80", "n_query": "60",
                "image_size": "12", "widths": "8,16,16", "batch_size": "48", "epochs": "6", "warmup_steps": "4"}
    spec = RunSpec(task="cifar10", methods=("gradsim", "random"), results_dir=tmp_path / "results",
                   executor="serial", device="cpu",
                   overrides={"task": task_set, "gt": {"num_subsets": "12"}})
    summaries, failures = run(spec)
    assert not failures
    by = {s["method"]: s for s in summaries}
    assert by["gradsim"]["mean"] > 0.1 > abs(by["random"]["mean"])    # measured: 0.18 and 0.01


def test_training_learns_and_calls_the_checkpoint_hook(tmp_path):
    write_cifar(tmp_path)
    task = Cifar10(Cifar10Config(data_dir=str(tmp_path), verify=False, download=False, n_train=240, warmup_size=80,
                                 n_query=60, image_size=12, widths=(8, 16, 16), batch_size=48, epochs=6,
                                 warmup_steps=4))
    model = task.make_model(0)
    steps = []
    task.train(model, torch.arange(240), seed=1, on_checkpoint=lambda s, m, lr: steps.append((s, lr)),
               checkpoint_steps=(0, 7, 30))
    assert [s for s, _ in steps] == [0, 7, 30] and task.total_steps(240) == 30
    assert steps[1][1] > steps[0][1] > steps[2][1] > 0                       # triangle: up, then down
    accuracy = (task.outputs(model.eval(), task.query_data()).argmax(1) == task.query_data()[1]).float().mean()
    assert accuracy > 0.5                                                    # learnt the prototypes (chance: 0.1)


def test_cifar2_keeps_two_classes_relabelled_and_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """dattri's CIFAR-2 as a setting (task.classes=3,5): only cats and dogs, relabelled 0 and 1 in that
    order, a two-way head; a reduced run on generated files in the real layout goes through."""
    written = write_cifar(tmp_path / "data", per_batch=120)
    monkeypatch.setenv("TDABENCH_CIFAR10_DIR", str(tmp_path / "data"))
    task = Cifar10(Cifar10Config(classes=(5, 3), verify=False, download=False, n_train=60, warmup_size=20,
                                 image_size=12, widths=(8, 16, 16)))
    folder = tmp_path / "data" / "cifar-10-batches-py"
    _, test_y = read_batches(folder, ("test_batch",), None)
    kept = test_y[(test_y == 3) | (test_y == 5)]
    assert torch.equal(task.query_data()[1], (kept == 3).long())                # 5 → 0, 3 → 1
    assert len(task.query_data()[1]) == len(kept) and written["test_batch"].shape[0] == 120
    assert set(task.train_data()[1].tolist()) == {0, 1}
    assert task.outputs(task.make_model(0), task.query_data()).shape == (len(kept), 2)
    with pytest.raises(ValueError, match="task.classes"):
        Cifar10Config(classes=(3, 3))
    from tdabench import cli
    assert cli.main(["run", "--task", "cifar10", "--method", "gradsim,random", "--results-dir", str(tmp_path / "r"),
                     "--serial", "--json", "--set", "task.classes=3,5", "--set", "task.verify=false",
                     "--set", "task.download=false", "--set", "task.n_train=60", "--set", "task.warmup_size=20",
                     "--set", "task.image_size=12", "--set", "task.widths=8,16,16", "--set", "task.batch_size=20",
                     "--set", "task.epochs=2", "--set", "task.warmup_steps=2", "--set", "gt.num_subsets=6"]) == 0
    assert {r["method"] for r in json.loads(capsys.readouterr().out)} == {"gradsim", "random"}
