"""The spread over seeds: head configurations refit with several seeds, each scored on the whole test split.

Head side only: everything here reads the feature files (pooled features, the cut cache), never an image
or the backbone. The protocol (docs/seeds.md):

- **Fits.** For each configuration and each seed of ``seeds.values``, the head is built with that seed
  and fitted as the train stage fits it (``fit_store``), on the cached train split (and val, for a head
  that chooses a penalty there). Only the seed changes: the random initialisation, shuffling, dropout
  and flips of a stochastic head.
- **Re-carved splits** (``seeds.splits``). Each seed also draws another train / val split from the
  cached train + val rows, by the prepare stage's rule (:func:`pipeline.core.splitting.validation_rows`,
  stratified, ``data.val_fraction``), so deterministic heads vary too. The rows are put in the order of
  their image ids first: the split of a seed depends on the images and the seed, not on how prepare
  carved them. The test split is never moved: it only scores.
- **Scores.** Each fit is scored on the whole test split as the evaluate stage scores it; per
  configuration: the mean, the standard deviation (ddof = 1), the smallest and largest test top-1 over
  the seeds.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.config import HeadConfig, SeedsParams
from pipeline.core.fileutil import atomic_files, write_json
from pipeline.core.head_registry import build_head
from pipeline.core.layout import head_name
from pipeline.core.splitting import validation_rows
from pipeline.heads.base import fit_and_score
from pipeline.store.features import FeatureStore, SplitView

CARVE_STREAM = 0x7365  # "se": keeps the re-carving's random stream apart from other uses of a seed


def recarve(store: FeatureStore, val_fraction: float, seed: int) -> SplitView:
    """The store with train and val drawn again from its train + val rows (put in image-id order, the
    validation rows chosen by the prepare stage's rule, seeded from ``seed``); test unchanged."""
    pool = [split for split in ("train", "val") if split in store.splits]
    split_of = np.concatenate([np.full(store.n_rows(s), k) for k, s in enumerate(pool)])
    row_of = np.concatenate([np.arange(store.n_rows(s)) for s in pool])
    labels = np.concatenate([store.labels(s) for s in pool])
    order = np.argsort(np.array([i for s in pool for i in store.ids(s)], dtype=object), kind="stable")
    is_val = np.zeros(len(labels), bool)
    rng = np.random.default_rng([seed, CARVE_STREAM])
    is_val[order] = validation_rows(labels[order], len(store.spec.classes), val_fraction, rng)
    return SplitView(store, {
        "train": [(s, row_of[~is_val & (split_of == k)]) for k, s in enumerate(pool)],
        "val": [(s, row_of[is_val & (split_of == k)]) for k, s in enumerate(pool)],
        "test": [("test", np.arange(store.n_rows("test")))],
    })


@dataclass
class SeedFit:
    """One configuration fitted with one seed and scored on the test split."""

    key: str
    kind: str
    seed: int
    top1: float
    fit_seconds: float
    n_train: int


def seed_fits(stores: dict[str, FeatureStore], configs: list[HeadConfig], seed: int, splits: bool, val_fraction: float,
              log: Callable[[str], None] = print) -> list[SeedFit]:
    """Fit every configuration with ``seed`` (on a re-carved split when ``splits``); ``stores``: the open
    feature file of each input a configuration reads (``pooled``, ``cut``)."""
    fits = []
    for config in configs:
        store = stores[config.params.input]
        data = recarve(store, val_fraction, seed) if splits else store
        fitted = fit_and_score(build_head(config, seed=seed), data, scored_on=store)
        fit = SeedFit(config.key, config.kind, seed, fitted.top1["test"], fitted.fit_seconds, data.n_rows("train"))
        log(f"{config.key} ({config.kind}) seed {seed}: test top-1 {fit.top1:.4f}, fitted in {fit.fit_seconds:.1f} s")
        fits.append(fit)
    return fits


def write_fits(fits: list[SeedFit], path: str | Path) -> None:
    """One seed's fits (the file of stage seeds@<seed>)."""
    write_json(path, [asdict(f) for f in fits])


def read_fits(path: str | Path) -> list[SeedFit]:
    return [SeedFit(**f) for f in json.loads(Path(path).read_text())]


def summarise(fits: list[SeedFit], seeds: SeedsParams, val_fraction: float) -> dict:
    """What seeds.json holds: per configuration, the test top-1 of each seed, their mean, standard
    deviation (ddof = 1), smallest and largest, and the fit times (``fits``: every seed's, in the order of
    ``seeds.values``)."""
    out: dict = {"seeds": list(seeds.values), "splits": seeds.splits, "configurations": {}}
    if seeds.splits:
        out["val_fraction"] = val_fraction
    for key in dict.fromkeys(f.key for f in fits):
        mine = [f for f in fits if f.key == key]
        top1 = [f.top1 for f in mine]
        out["configurations"][key] = {
            "name": head_name(key), "kind": mine[0].kind, "n": len(top1),
            "mean": statistics.fmean(top1), "sd": statistics.stdev(top1), "min": min(top1), "max": max(top1),
            "top1": top1, "fit_seconds": [round(f.fit_seconds, 3) for f in mine], "n_train": mine[0].n_train,
        }
    return out


def table(summary: dict) -> str:
    """The Markdown table of seeds.md (or the sentence saying the stage is off)."""
    if not summary["seeds"]:
        return ("# Spread over seeds\n\nOff: `seeds.values` is empty. Set for example `seeds.values: [0, 1, 2, 3, 4]` "
                "to refit the stochastic heads with each seed (`seeds.splits: true` also re-carves train / val per "
                "seed); see docs/seeds.md.\n")
    what = ("the head's seed, and a train / val split re-carved from the cached train + val rows per seed "
            f"(val_fraction {summary['val_fraction']})" if summary["splits"] else "the head's seed only (the splits of prepare)")
    lines = [
        "# Spread over seeds", "",
        f"Seeds {summary['seeds']}; what changes from one fit to the next: {what}. Test top-1 on the whole test split.", "",
        "| head | kind | mean | sd | min | max | test top-1 per seed | fit s (mean) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for c in summary["configurations"].values():
        per_seed = ", ".join(f"{t:.4f}" for t in c["top1"])
        lines.append(f"| {c['name']} | {c['kind']} | {c['mean']:.4f} | {c['sd']:.4f} | {c['min']:.4f} | {c['max']:.4f} | "
                     f"{per_seed} | {statistics.fmean(c['fit_seconds']):.1f} |")
    lines += ["", "sd: sample standard deviation (ddof = 1) over the seeds. It measures how much a figure moves from "
              "one fit to another on these test images; the sampling error of the test set itself is the interval "
              "of comparison.md."]
    return "\n".join(lines) + "\n"


def write_outputs(summary: dict, stem: str | Path) -> None:
    """``<stem>.json`` (the summary) and ``<stem>.md``, as one set."""
    stem = Path(stem)
    with atomic_files(stem.parent) as staging:
        write_json(staging / f"{stem.name}.json", summary)
        (staging / f"{stem.name}.md").write_text(table(summary))
