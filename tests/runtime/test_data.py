"""archc.runtime.data: the bundled digits split, and users' own loaders."""
from __future__ import annotations

import sys

import pytest
import torch

from archc.runtime.data import DataError, digits, load_data, split_tensors


def test_digits_split_is_deterministic_stratified_and_disjoint():
    a, b = digits(), digits()
    for k in ("train", "val", "test"):
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])
    n = {k: len(a[k][1]) for k in a}
    assert sum(n.values()) == 1797 and n["val"] == n["test"] == 269
    x, y = a["train"]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(a["val"][1].tolist()) == set(range(10))
    rows = {tuple(r.flatten().tolist()) + (int(t),) for k in a for r, t in zip(*a[k])}
    assert len(rows) >= 1790  # the splits do not share examples (the dataset has a few duplicates)
    other = digits(seed=1)
    assert not torch.equal(other["val"][0], a["val"][0])


def test_load_digits_loaders():
    d = load_data("digits", batch=32)
    assert d.input_shape == (1, 8, 8) and d.classes == 10
    x, y = next(iter(d.train))
    assert x.shape == (32, 1, 8, 8)
    assert len(d.val.dataset) == len(d.test.dataset) == 269
    first = [next(iter(load_data("digits", batch=32).train))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # the training order is seeded too


def test_digits_rejects_arguments():
    with pytest.raises(DataError, match="no argument `root`"):
        load_data("digits", root="/data")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_loaders.py").write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "def pair(n=100):\n"
        "    return torch.randn(n, 4), torch.arange(n) % 3\n"
        "def loaders():\n"
        "    ds = TensorDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))\n"
        "    return DataLoader(ds, batch_size=5), DataLoader(ds, batch_size=5)\n"
        "def splits():\n"
        "    t = (torch.randn(10, 4), torch.zeros(10, dtype=torch.long))\n"
        "    return {'train': t, 'validation': t, 'test': t}\n"
        "def broken():\n"
        "    raise RuntimeError('disk on fire')\n"
        "def single():\n"
        "    return DataLoader(TensorDataset(torch.randn(4, 2)))\n")
    yield str(tmp_path)
    sys.modules.pop("my_loaders", None)


def test_user_loader_shapes(user_module):
    d = load_data("my_loaders:pair", batch=8, search_path=[user_module], n=200)
    assert len(d.train.dataset) + len(d.val.dataset) + len(d.test.dataset) == 200
    assert d.input_shape == (4,) and d.classes == 3
    d = load_data("my_loaders:loaders", search_path=[user_module])
    assert d.train.batch_size == 5 and d.test is None
    d = load_data("my_loaders:splits", batch=4, search_path=[user_module])
    assert d.val is not None and d.test is not None and next(iter(d.train))[0].shape[0] == 4


@pytest.mark.parametrize("name,message", [
    ("cifar10", "unknown data `cifar10`"),
    ("no_such_module_xyz:load", "cannot import `no_such_module_xyz`"),
    ("my_loaders:nope", "has no function `nope`"),
    ("my_loaders:broken", "raised RuntimeError: disk on fire"),
    ("my_loaders:single", "only one split"),
])
def test_loader_errors(user_module, name, message):
    with pytest.raises(DataError, match=message):
        load_data(name, search_path=[user_module])


def test_split_tensors_checks_fractions():
    x, y = torch.randn(10, 2), torch.zeros(10, dtype=torch.long)
    with pytest.raises(DataError):
        split_tensors(x, y, val=0.6, test=0.5)
    parts = split_tensors(x, torch.randn(10), val=0.2, test=0.2)  # regression targets: not stratified
    assert sum(len(p[0]) for p in parts.values()) == 10
