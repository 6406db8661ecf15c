"""Modules that archc's generated code uses. Imports torch only."""
from __future__ import annotations

from torch import nn


class Container(nn.Module):
    """A module that only holds children at a path (`layer1`, `layer1.0`).

    `container[0]` reads child "0", as nn.Sequential names them.
    """

    def __getitem__(self, key) -> nn.Module:
        return self._modules[str(key)]
