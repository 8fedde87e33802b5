"""The one top-k cosine search: exact against brute force, in any blocking, ties to the lowest index."""

import numpy as np
import pytest

from pipeline.heads.neighbours import top_k_cosine


def brute_top_k(queries, base, k, exclude_self=False):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    sims = q @ b.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(base)), sims.shape), -sims), axis=1)[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("k,block_rows", [(1, 5), (3, 7), (10, 1000), (4, 16)])
def test_top_k_is_the_brute_force_one_in_any_blocking(k, block_rows):
    rng = np.random.default_rng(k)
    queries, base = rng.normal(size=(41, 12)).astype(np.float32), rng.normal(size=(37, 12)).astype(np.float32)
    index, sims = brute_top_k(queries, base, k)
    found = top_k_cosine(queries, base, k, block_rows=block_rows, device="cpu")
    assert found.index.shape == (41, k)
    np.testing.assert_allclose(found.similarity, sims, atol=1e-5)
    assert (found.index == index).all()
    index, sims = brute_top_k(base, base, k, exclude_self=True)
    found = top_k_cosine(base, base, k, exclude_self=True, block_rows=block_rows, device="cpu")
    assert (found.index == index).all() and (found.index != np.arange(len(base))[:, None]).all()


def test_ties_keep_the_lowest_index_and_a_small_base_pads():
    """Rows of +-1: similarities are multiples of 1/16, exact in float32, so ties are real; every base
    row appears three times, so equal similarities abound."""
    rng = np.random.default_rng(0)
    base = np.sign(rng.normal(size=(20, 16))).astype(np.float32)
    base = np.concatenate([base, base, 2 * base])
    queries = np.sign(rng.normal(size=(30, 16))).astype(np.float32)
    index, sims = brute_top_k(queries, base, 3)
    found = top_k_cosine(queries, base, 3, block_rows=7, device="cpu")
    assert (found.index == index).all() and (found.similarity == sims).all()
    small = top_k_cosine(queries, base[:2], 4, device="cpu")  # fewer base rows than k: -1 and -inf
    assert (small.index[:, 2:] == -1).all() and np.isneginf(small.similarity[:, 2:]).all()
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k_cosine(queries, base, 0)


@pytest.mark.parametrize("block_rows", [5, 16, 1000])
def test_subsets_are_searches_of_each_subset_alone_from_one_pass(block_rows):
    """``subsets``: the nearest rows within each set of base rows (indices into the whole base), what brute
    force on that set alone gives; a set smaller than k pads with -1."""
    rng = np.random.default_rng(1)
    base, queries = rng.normal(size=(80, 16)).astype(np.float32), rng.normal(size=(23, 16)).astype(np.float32)
    subsets = [np.arange(80), np.sort(rng.choice(80, 9, replace=False)), np.array([3, 43]), np.arange(0, 80, 7)]
    found = top_k_cosine(queries, base, 4, block_rows=block_rows, device="cpu", subsets=subsets)
    assert len(found) == len(subsets)
    for rows, near in zip(subsets, found):
        k = min(4, len(rows))
        index, sims = brute_top_k(queries, base[rows], k)
        assert (near.index[:, :k] == rows[index]).all() and (near.index[:, k:] == -1).all()
        np.testing.assert_allclose(near.similarity[:, :k], sims, atol=1e-5)
