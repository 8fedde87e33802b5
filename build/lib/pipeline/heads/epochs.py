"""The epoch loop of the heads that train for epochs (mlp, finetune): written once.

The caller builds the network, the optimiser (AdamW) and the learning-rate schedule, and seeds the
random generators; :func:`run_epochs` then runs every epoch the same way. Each head supplies what is its
own: its batches (shuffled by its seeded generator), its loss on a batch (augmentation included) and
what to put in train mode.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    import torch
    from torch import nn


def run_epochs(net: nn.Module, opt: torch.optim.Optimizer, schedule, epochs: int,
               batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
               loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
               train_mode: Callable[[nn.Module], None] | None = None,
               end_epoch: Callable[[int, float, float], None] | None = None) -> tuple[list[float], list[float]]:
    """Train ``net`` for ``epochs`` epochs: each epoch puts it in train mode (``train_mode``, default
    ``net.train()``), then for every batch (x, y) of ``batches(epoch)`` takes one optimiser step on
    ``loss(net, x, y)`` and one schedule step. After each epoch ``end_epoch(epoch, mean training loss,
    seconds)``. Returns the mean training loss and the seconds of every epoch."""
    losses, seconds = [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        (train_mode or (lambda n: n.train()))(net)
        total, rows = 0.0, 0
        for x, y in batches(epoch):
            value = loss(net, x, y)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            schedule.step()
            total, rows = total + value.item() * len(y), rows + len(y)
        losses.append(total / rows)
        seconds.append(time.perf_counter() - start)
        if end_epoch is not None:
            end_epoch(epoch, losses[-1], seconds[-1])
    return losses, seconds
