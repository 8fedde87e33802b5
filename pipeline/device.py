"""Where torch work runs: the GPU when there is one, else the CPU."""

from __future__ import annotations


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
