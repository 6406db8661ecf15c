"""Recurrent modules that archc's generated code uses (ops/recurrent.py). Imports torch only.

- `LSTM`: torch.nn.LSTM (batch first) whose state is one tensor, h_n and c_n stacked:
  `forward(x, state=None) -> (outputs, state [2, layers·D, B, hidden])`. Its parameters
  and state_dict are torch.nn.LSTM's.
- `ConvLSTM`: the ConvLSTM of Shi et al. (2015) over videos `[B, C, T, H, W]`.
"""
from __future__ import annotations

import torch
from torch import nn


class LSTM(nn.LSTM):
    """nn.LSTM with the state as one tensor: `state[0]` is h, `state[1]` is c."""

    def forward(self, x, state=None):  # noqa: D401 - same contract as nn.LSTM, one state tensor
        hx = None if state is None else (state[0], state[1])
        out, (h, c) = super().forward(x, hx)
        return out, torch.stack((h, c))


class ConvLSTM(nn.Module):
    """ConvLSTM over `x [B, C, T, H, W]` -> `(outputs [B, hidden, T, H, W], state [2, B, hidden, H, W])`.

    One convolution `conv` over the concatenation `[x_t, h_{t-1}]` (channels C + hidden)
    gives the four gates (i, f, g, o: torch's order), "same" padding:

        i = σ(W_i * [x_t, h] + w_ci ∘ c_{t-1} + b_i)      (w_c· only with peephole=True)
        f = σ(W_f * [x_t, h] + w_cf ∘ c_{t-1} + b_f)
        c_t = f ∘ c_{t-1} + i ∘ tanh(W_g * [x_t, h] + b_g)
        o = σ(W_o * [x_t, h] + w_co ∘ c_t + b_o)
        h_t = o ∘ tanh(c_t)

    `state` (h_0 and c_0 stacked) defaults to zeros. Peephole weights `w_ci`, `w_cf`,
    `w_co` are `[hidden, H, W]` (Shi et al.'s Hadamard products), initialised to zero.
    """

    def __init__(self, in_channels: int, hidden: int, kernel, bias: bool = True, peephole: bool = False,
                 size: tuple[int, int] | None = None):
        super().__init__()
        ks = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, ks, padding=(ks[0] // 2, ks[1] // 2), bias=bias)
        self.peephole = peephole
        if peephole:
            if size is None:
                raise ValueError("peephole weights need the frame size (H, W)")
            for n in ("w_ci", "w_cf", "w_co"):
                setattr(self, n, nn.Parameter(torch.zeros(hidden, *size)))

    def step(self, x_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: frame `x_t [B, C, H, W]`, state (h, c) -> new (h, c)."""
        i, f, g, o = self.conv(torch.cat([x_t, h], dim=1)).chunk(4, dim=1)
        if self.peephole:
            i = i + self.w_ci * c
            f = f + self.w_cf * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.peephole:
            o = o + self.w_co * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        b, _, _, hgt, wid = x.shape
        if state is None:
            h = c = x.new_zeros(b, self.hidden, hgt, wid)
        else:
            h, c = state[0], state[1]
        outs = []
        for x_t in x.unbind(2):  # one backward node for all frames: their gradients stacked once, not
            h, c = self.step(x_t, h, c)  # a zero-filled input-sized gradient per frame, summed
            outs.append(h)
        return torch.stack(outs, dim=2), torch.stack((h, c))
