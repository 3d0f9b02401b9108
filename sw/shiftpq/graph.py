"""The layer graph: a small typed IR shared by the PyTorch model, metrics and export.

A network is a list of ops in execution order.  Each op reads named tensors and writes one.
The PyTorch model's forward pass interprets this list, so the graph that metrics count and
that export writes is, by construction, the graph that was trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Conv:
    """3x3 (or kxk) convolution + BatchNorm; pruned output channels are exactly 0."""
    name: str
    src: str
    dst: str
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    in_hw: int

    @property
    def out_hw(self) -> int:
        return (self.in_hw + 2 * self.padding - self.kernel) // self.stride + 1

    def run(self, net, env):
        return net.get_submodule(self.name)(env[self.src])


@dataclass(frozen=True)
class Act:
    """ReLU followed by the activation quantizer ``name`` (identity while quantization is off)."""
    name: str
    src: str
    dst: str
    bits: int

    def run(self, net, env):
        return net.get_submodule(self.name)(F.relu(env[self.src]))


@dataclass(frozen=True)
class Add:
    """Residual add of two tensors with the same shape."""
    name: str
    srcs: tuple[str, str]
    dst: str

    def run(self, net, env):
        return env[self.srcs[0]] + env[self.srcs[1]]


@dataclass(frozen=True)
class ShortcutA:
    """Parameter-free option-A shortcut: subsample by ``stride``, zero-pad channels on both sides."""
    name: str
    src: str
    dst: str
    stride: int
    cin: int
    cout: int

    @property
    def pad_before(self) -> int:
        return (self.cout - self.cin) // 2

    def run(self, net, env):
        x = env[self.src]
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.cout != self.cin:
            x = F.pad(x, (0, 0, 0, 0, self.pad_before, self.cout - self.cin - self.pad_before))
        return x


@dataclass(frozen=True)
class MaxPool:
    name: str
    src: str
    dst: str
    size: int

    def run(self, net, env):
        return F.max_pool2d(env[self.src], self.size)


@dataclass(frozen=True)
class AvgPool:
    """Global average pool over the whole in_hw x in_hw map."""
    name: str
    src: str
    dst: str
    in_hw: int

    def run(self, net, env):
        return env[self.src].mean(dim=(2, 3))


@dataclass(frozen=True)
class Linear:
    name: str
    src: str
    dst: str
    cin: int
    cout: int

    def run(self, net, env):
        return net.get_submodule(self.name)(env[self.src])


Op = Conv | Act | Add | ShortcutA | MaxPool | AvgPool | Linear


def run_graph(net, ops: list[Op], x: torch.Tensor) -> torch.Tensor:
    env = {"input": x}
    for op in ops:
        env[op.dst] = op.run(net, env)
    return env[ops[-1].dst]
