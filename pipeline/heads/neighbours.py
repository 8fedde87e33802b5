"""Exact top-k cosine search in blocks: the one nearest-neighbour kernel of the project.

The k-NN head, the learning curve's k-NN and the leakage search all call :func:`top_k_cosine`.
Queries and base are arrays ``(N, D)`` or functions returning an iterable of row blocks (read again for
every query block, so a feature file never has to fit in memory). Memory stays a few blocks of at most
``block_rows`` x ``block_rows`` similarities plus ``(queries, k)`` results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Union

import numpy as np

Blocks = Union[np.ndarray, Callable[[], Iterable[np.ndarray]]]
"""Rows of features: an array (N, D), or a function returning an iterable of row blocks (read again
for every query block when it is the base)."""


@dataclass(frozen=True)
class Neighbours:
    """For each query row its ``k`` nearest base rows, most similar first: ``index`` (N, k) (-1 where the
    base has fewer than k rows) and their cosine ``similarity`` (N, k) (-inf there)."""

    index: np.ndarray
    similarity: np.ndarray


def _blocks(rows: Blocks, block_rows: int) -> Iterator[np.ndarray]:
    if isinstance(rows, np.ndarray):
        return (rows[start : start + block_rows] for start in range(0, len(rows), block_rows))
    return iter(rows())


def _unit_rows(block: np.ndarray, device):
    """Rows scaled to unit length, float32 on ``device`` (a zero row stays zero: similarity 0)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
    return F.normalize(t.reshape(len(t), -1), dim=1)


def top_k_cosine(queries: Blocks, base: Blocks, k: int = 1, *, exclude_self: bool = False,
                 block_rows: int = 4096, device=None, normalize: bool = True,
                 subsets: list[np.ndarray] | None = None) -> Neighbours | list[Neighbours]:
    """The ``k`` nearest base rows of every query row by cosine similarity, exactly, in blocks.

    For each block of queries the base is streamed block by block; each block's own top k is merged
    into a running top k per query. ``exclude_self``: queries and base are the same rows in the same
    order, and a row is never its own neighbour. ``normalize=False`` takes the rows as given (already
    unit length, or a plain inner-product search). ``block_rows`` slices arrays; blocks from a function
    keep their own size. ``device``: a torch device (default: the GPU when there is one). ``subsets``:
    sorted row numbers of the base, several sets of them: the nearest rows within each set, from one
    similarity computation per pair of blocks (a list of :class:`Neighbours`, one per set, indices into
    the whole base).
    """
    import torch

    from pipeline.core.device import torch_device

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    device = torch.device(device) if device is not None else torch_device()
    sets = [None] if subsets is None else [torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
                                           for rows in subsets]

    def rows_of(block):
        if normalize:
            return _unit_rows(block, device)
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device).reshape(len(block), -1)

    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in sets]
    q_start, n_base = 0, None
    for q_block in _blocks(queries, block_rows):
        q = rows_of(q_block)
        best = [torch.full((len(q), k), -torch.inf, device=device) for _ in sets]
        best_index = [torch.full((len(q), k), -1, dtype=torch.int64, device=device) for _ in sets]
        b_start = 0
        for b_block in _blocks(base, block_rows):
            b = rows_of(b_block)
            if b.shape[1] != q.shape[1]:
                raise ValueError(f"queries have {q.shape[1]} values per row, the base {b.shape[1]}")
            if len(b):
                sims = q @ b.T
                if exclude_self:  # the rows both blocks hold: their own similarity does not count
                    lo, hi = max(q_start, b_start), min(q_start + len(q), b_start + len(b))
                    if lo < hi:
                        own = torch.arange(lo, hi, device=device)
                        sims[own - q_start, own - b_start] = -torch.inf
                for j, rows in enumerate(sets):
                    columns = None if rows is None else rows[(rows >= b_start) & (rows < b_start + len(b))] - b_start
                    if columns is None or len(columns):
                        part = sims if columns is None else sims[:, columns]
                        best[j], best_index[j] = _merge(best[j], best_index[j], part, k,
                                                        lambda i: (i if columns is None else columns[i]) + b_start)
            b_start += len(b)
        if n_base is not None and b_start != n_base:
            raise ValueError(f"the base gave {b_start} rows, then {n_base}: it must give the same rows on every pass")
        n_base = b_start
        for j in range(len(sets)):
            index = torch.where(torch.isinf(best[j]) & (best[j] < 0), torch.full_like(best_index[j], -1), best_index[j])
            found[j].append((index.cpu().numpy(), best[j].float().cpu().numpy()))
        q_start += len(q)
    if exclude_self and n_base is not None and n_base != q_start:
        raise ValueError(f"exclude_self needs the same rows as queries and base, got {q_start} and {n_base}")
    results = [Neighbours(np.concatenate([f[0] for f in parts]), np.concatenate([f[1] for f in parts])) if parts
               else Neighbours(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)) for parts in found]
    return results[0] if subsets is None else results


def _merge(best, best_index, sims, k: int, to_base):
    """The running top k of each query (``best``, ``best_index``) merged with a block of similarities
    ``sims``; ``to_base`` maps the block's column numbers to base rows."""
    import torch

    if k == 1:
        value, index = sims.max(dim=1, keepdim=True)  # the first maximum on ties
    else:  # topk's order among equal values is unspecified: put them in index order
        value, index = torch.topk(sims, min(k, sims.shape[1]), dim=1)
        by_index = torch.argsort(index, dim=1)
        value, index = torch.gather(value, 1, by_index), torch.gather(index, 1, by_index)
    # a stable sort of (earlier blocks, this block in index order): equal similarities keep the lower index first
    merged = torch.cat([best, value], dim=1)
    merged_index = torch.cat([best_index, to_base(index)], dim=1)
    order = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(merged, 1, order), torch.gather(merged_index, 1, order)
