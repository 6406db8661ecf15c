"""Data for training and search: the bundled `digits`, or a user's own loader.

    from archc.runtime.data import load_data
    data = load_data("digits", batch=64)             # scikit-learn's 8x8 digits, nothing downloaded
    data = load_data("mypkg.loaders:cifar_small", batch=128, root="~/data")
    data.train, data.val, data.test                  # DataLoaders (test may be None)
    data.input_shape, data.classes                   # (1, 8, 8), 10 (when known)

`digits` is scikit-learn's bundled copy of the UCI handwritten digits (1,797
images of 8x8 pixels, values 0..16, scaled here to 0..1) as float32
`[N, 1, 8, 8]` with int64 labels, split by a stratified shuffle with a fixed
seed into train / validation / test (70% / 15% / 15% by default): the same
split on every machine and every run.

`"module:function"` imports `module` (also from the directories in
`search_path`, e.g. the spec's own) and calls `function(**kwargs)`. It may return

- DataLoaders: `(train, val)`, `(train, val, test)` or a dict with keys
  `train`, `val` (or `validation`) and optionally `test`;
- the same shapes holding datasets or `(inputs, targets)` tensor pairs
  instead, which are wrapped in DataLoaders of `batch` examples;
- a single `(inputs, targets)` pair, which is split like `digits`.

Imports torch, never the compiler; `digits` reads scikit-learn's data file. Failures
raise `DataError` with a message meant for the user.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset


class DataError(ValueError):
    """Data that cannot be loaded; the message says why."""


@dataclass
class Data:
    name: str
    train: DataLoader
    val: DataLoader | None
    test: DataLoader | None
    input_shape: tuple[int, ...] | None = None  # one example, without the batch axis
    classes: int | None = None


BUILTIN = ("digits",)


def split_tensors(x: torch.Tensor, y: torch.Tensor, *, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  stratify: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Split `(x, y)` into train / val / test by a seeded shuffle (stratified by label when it can be)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"validation and test fractions must be in [0, 1) and sum below 1, got {val} and {test}")
    n = len(x)
    if len(y) != n:
        raise DataError(f"inputs and targets differ in length: {n} vs {len(y)}")
    g = torch.Generator().manual_seed(seed)
    labels = y if stratify and not y.is_floating_point() and y.dim() == 1 else None
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)] if labels is not None \
        else [torch.arange(n)]
    for idx in groups:
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = {}
    for k, chunks in parts.items():
        idx = torch.cat(chunks).sort().values
        if len(idx):
            out[k] = (x[idx], y[idx])
    if "train" not in out:
        raise DataError("the training split is empty")
    return out


def _digits_table() -> list[list[int]]:
    """The rows of scikit-learn's bundled digits.csv.gz (64 pixels, then the label).

    Read from the installed package's data without importing scikit-learn (its
    import costs seconds); `sklearn.datasets.load_digits` reads the same file."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("`digits` needs scikit-learn (pip install scikit-learn)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return [[int(float(v)) for v in line.split(",")] for line in f if line.strip()]
    from sklearn.datasets import load_digits  # a layout we do not know: let scikit-learn find it

    d = load_digits()
    return [[*map(int, row), int(t)] for row, t in zip(d.data, d.target)]


def digits(*, val: float = 0.15, test: float = 0.15, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled 8x8 digits as `[N, 1, 8, 8]` float32 in 0..1, split train/val/test."""
    table = torch.tensor(_digits_table(), dtype=torch.int64)
    x = table[:, :64].to(torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = table[:, 64].clone()
    return split_tensors(x, y, val=val, test=test, seed=seed)


def _loader(part: Any, batch: int, shuffle: bool, seed: int) -> DataLoader:
    if isinstance(part, DataLoader):
        return part
    if isinstance(part, (tuple, list)) and len(part) >= 2 and all(isinstance(t, torch.Tensor) for t in part):
        part = TensorDataset(*part)
    if not isinstance(part, Dataset) and not hasattr(part, "__getitem__"):
        raise DataError(f"expected a DataLoader, a Dataset or an (inputs, targets) pair, got {type(part).__name__}")
    g = torch.Generator().manual_seed(seed) if shuffle else None
    if isinstance(part, TensorDataset):
        # Whole batches by one index each (a tensor dataset indexes with a list): no per-example
        # collation, many times faster on small examples. `generator` is the one shuffling.
        order = RandomSampler(part, generator=g) if shuffle else SequentialSampler(part)
        return DataLoader(part, batch_size=None, sampler=BatchSampler(order, batch, drop_last=False), generator=g)
    return DataLoader(part, batch_size=batch, shuffle=shuffle, generator=g)


def _is_pair(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(t, torch.Tensor) for t in v) \
        and len(v[0]) == len(v[1])


def _normalize(result: Any, *, val: float, test: float, seed: int) -> dict[str, Any]:
    """A loader's result as {"train", "val"?, "test"?}."""
    if _is_pair(result):
        return split_tensors(result[0], result[1], val=val, test=test, seed=seed)
    if isinstance(result, dict):
        out = {}
        for k, v in result.items():
            key = {"validation": "val", "valid": "val"}.get(k, k)
            if key not in ("train", "val", "test"):
                raise DataError(f"unexpected key `{k}`: use train, val (or validation) and test")
            out[key] = v
        if "train" not in out:
            raise DataError("the loader returned no `train` data")
        return out
    if isinstance(result, (tuple, list)) and 2 <= len(result) <= 3:
        return dict(zip(("train", "val", "test"), result))
    if isinstance(result, (DataLoader, Dataset)):
        raise DataError("the loader returned only one split: return (train, val) or (train, val, test)")
    raise DataError(f"a loader must return DataLoaders, datasets or tensors, got {type(result).__name__}")


def _example_shape(loader: DataLoader) -> tuple[tuple[int, ...] | None, int | None]:
    ds = getattr(loader, "dataset", None)
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        x, y = ds.tensors[0], ds.tensors[-1]
        classes = int(y.max()) + 1 if not y.is_floating_point() and y.numel() else None
        return tuple(x.shape[1:]), classes
    return None, None


def resolve_loader(name: str, search_path: Sequence[str] = ()):
    """The function `module:function` names (importing from `search_path` first)."""
    module_name, _, fn_name = name.partition(":")
    if not module_name or not fn_name:
        raise DataError(f"unknown data `{name}`: built in are {', '.join(BUILTIN)}; "
                        "a loader of your own is written `module:function`")
    added = [p for p in search_path if p not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataError(f"cannot import `{module_name}`: {e}") from e
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise DataError(f"`{module_name}` has no function `{fn_name}`")
    return fn


def load_data(name: str, *, batch: int = 64, seed: int = 0, val: float = 0.15, test: float = 0.15,
              search_path: Sequence[str] = (), eval_batch: int | None = None, **kwargs) -> Data:
    """Load `name` ("digits" or "module:function") as DataLoaders of `batch` examples.

    `seed` fixes the split (for tensors split here) and the training order;
    `kwargs` go to a user's function (`digits` takes none)."""
    if batch < 1:
        raise DataError(f"the batch size must be at least 1, got {batch}")
    if name == "digits":
        if kwargs:
            raise DataError(f"`digits` takes no argument `{next(iter(kwargs))}` (only val, test and seed)")
        parts: dict[str, Any] = digits(val=val, test=test, seed=seed)
    else:
        fn = resolve_loader(name, search_path)
        try:
            result = fn(**kwargs)
        except DataError:
            raise
        except Exception as e:  # the user's code: report, don't crash
            raise DataError(f"`{name}` raised {type(e).__name__}: {e}") from e
        parts = _normalize(result, val=val, test=test, seed=seed)
    eval_batch = eval_batch or max(batch, 256)
    train = _loader(parts["train"], batch, True, seed)
    val_l = _loader(parts["val"], eval_batch, False, seed) if parts.get("val") is not None else None
    test_l = _loader(parts["test"], eval_batch, False, seed) if parts.get("test") is not None else None
    shape, classes = _example_shape(train)
    return Data(name, train, val_l, test_l, shape, classes)
