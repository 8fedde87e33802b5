"""The spread over seeds: each seed's fit is the head fitted with that seed and scored as evaluate scores it,
re-carved splits follow the prepare stage's rule on the cached train + val rows only, the test split only
scores, the summary is numpy's mean and sd, compare shows it. Real features: small real caches of CIFAR-10."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline.analyses import seeds as S
from pipeline.core import layout
from pipeline.core.config import SeedsParams, parse_params
from pipeline.core.errors import ConfigError
from pipeline.core.head_registry import build_head
from pipeline.core.splitting import validation_rows
from pipeline.stages import compare, evaluate, train
from pipeline.stages import seeds as seeds_stage
from pipeline.store.features import FeatureStore, SplitView
from tests.conftest import QUICK, ROOT, small_pooled_cache, with_section

CLASSES = ["airplane", "cat", "ship", "truck"]
RAW = {  # 40 training images per class (30 train + 10 val), 15 test images per class
    "data": {"val_fraction": 0.25},
    "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 16, "cut": None},
    "heads": {"mlp": {"kind": "mlp", "mlp": QUICK["mlp"]}, "ridge": {"kind": "ridge"}},
    "finetune": {},
}


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Real pooled features (ResNet-18, random init, 64 px) of 4 CIFAR-10 classes, and the params."""
    return small_pooled_cache(tmp_path_factory.mktemp("seeds"), CLASSES, RAW)


def with_seeds(params, **seeds):
    return with_section(params, "seeds", **seeds)


def run_stage(out, params, stem):
    """Every seeds@<seed> stage of ``params``, then compare's gathering of their files into ``stem``.json / .md."""
    fits_dir = stem.parent / f"{stem.name}-fits"
    for seed in params.seeds.values:
        seeds_stage.run(params, {"pooled": out / "pooled.h5", "cut": out / "cut.h5"}, out / "splits.json", seed,
                        layout.seed_fits_file(seed, fits_dir))
    return compare.gather_seeds(params, fits_dir, stem)


def evaluated_top1(out, params, key: str, seed: int, tmp_path) -> float:
    """Test top-1 of configuration ``key`` fitted with ``seed`` (by the head itself) and scored by the
    evaluate stage."""
    config = params.head_config(key)
    features = out / layout.FEATURES[config.params.input].name
    with FeatureStore(features) as store:
        head = build_head(config, seed=seed).fit_store(store)
        identity = store.spec.identity()
    head.save(tmp_path / f"{seed}.npz", metadata={"features": identity})
    return evaluate.run(features, tmp_path / f"{seed}.npz", tmp_path / str(seed))["test"]["top1"]


# -- each seed's figure ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["heads.mlp", pytest.param("finetune.top", marks=pytest.mark.slow)])
def test_each_seed_is_the_head_fitted_with_that_seed_and_scored_as_evaluate_does(caches, key, tmp_path):
    out, params = caches
    summary = run_stage(out, with_seeds(params, values=[0, 3], configurations=[key]), tmp_path / "seeds")
    assert list(summary["configurations"]) == [key]
    figures = summary["configurations"][key]["top1"]
    assert figures == [evaluated_top1(out, params, key, seed, tmp_path) for seed in (0, 3)]


def test_different_seeds_fit_different_mlps_the_same_seed_the_same(cache):
    out, params = cache
    config = params.head_config("heads.mlp")
    with FeatureStore(out / "pooled.h5") as store:
        X, _ = store.load("test")
        scores = [build_head(config, seed=seed).fit_store(store).decision_function(X) for seed in (0, 1, 0)]
    assert not np.allclose(scores[0], scores[1])
    assert np.array_equal(scores[0], scores[2])


def test_the_same_seeds_give_the_same_figures(cache, tmp_path):
    out, params = cache
    params = with_seeds(params, values=[0, 1, 2], configurations=["heads.mlp", "heads.ridge"], splits=True)
    first, second = (run_stage(out, params, tmp_path / name) for name in ("a", "b"))
    for summary in (first, second):
        for c in summary["configurations"].values():
            c.pop("fit_seconds")
    assert first == second
    mlp, ridge = first["configurations"]["heads.mlp"], first["configurations"]["heads.ridge"]
    assert len(set(mlp["top1"])) > 1 and len(set(ridge["top1"])) > 1  # re-carved splits move even ridge


def test_mean_and_sd_are_numpys_and_the_outputs_say_so(cache, tmp_path):
    out, params = cache
    summary = run_stage(out, with_seeds(params, values=[4, 1, 7], configurations=["heads.mlp"]), tmp_path / "seeds")
    c = summary["configurations"]["heads.mlp"]
    top1 = np.array(c["top1"])
    assert summary["seeds"] == [4, 1, 7] and c["n"] == 3 and c["name"] == "mlp" and c["kind"] == "mlp"
    assert c["mean"] == pytest.approx(np.mean(top1), abs=1e-12)
    assert c["sd"] == pytest.approx(np.std(top1, ddof=1), abs=1e-12)
    assert (c["min"], c["max"]) == (top1.min(), top1.max())
    assert c["n_train"] == 120  # the cached train split: 30 of each of 4 classes
    assert json.loads((tmp_path / "seeds.json").read_text()) == summary
    table = (tmp_path / "seeds.md").read_text()
    assert f"| mlp | mlp | {c['mean']:.4f} | {c['sd']:.4f} |" in table and "ddof = 1" in table


def test_off_no_seed_stage_and_a_placeholder(tmp_path):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["seeds"]["foreach"] == "${seeds.values}"  # no value, no stage: a head swap never waits for it
    summary = compare.gather_seeds(parse_params({}), tmp_path / "none", tmp_path / "seeds")
    assert summary == {"seeds": [], "splits": False, "configurations": {}}
    assert json.loads((tmp_path / "seeds.json").read_text()) == summary
    assert "Off: `seeds.values` is empty" in (tmp_path / "seeds.md").read_text()


# -- re-carved splits ------------------------------------------------------------------------------
def test_recarved_splits_are_stratified_disjoint_and_cover_the_cached_train_and_val(cache, monkeypatch):
    out, params = cache
    monkeypatch.setattr(SplitView, "block_rows", lambda self, max_bytes=0: 7)  # read in many short runs
    with FeatureStore(out / "pooled.h5") as store:
        ids = {s: store.ids(s) for s in ("train", "val", "test")}
        features = {i: x for s in ("train", "val", "test") for i, x in zip(ids[s], store.load(s)[0])}
        labels = {i: y for s in ("train", "val", "test") for i, y in zip(ids[s], store.labels(s))}
        vals = []
        for seed in (0, 1, 2, 0):
            view = S.recarve(store, 0.25, seed)
            train_ids, val_ids, test_ids = view.ids("train"), view.ids("val"), view.ids("test")
            assert not set(train_ids) & set(val_ids)
            assert sorted(train_ids + val_ids) == sorted(ids["train"] + ids["val"])  # exactly the cached rows
            assert test_ids == ids["test"]  # the test split never moves
            for split, split_ids in (("train", train_ids), ("val", val_ids)):
                X, y = view.load(split)  # the rows the view names, read from the file
                assert np.array_equal(X, np.stack([features[i] for i in split_ids]))
                assert y.tolist() == [labels[i] for i in split_ids] == view.labels(split).tolist()
            # stratified as prepare carves: 10 of each class's 40 (round(0.25 * 40))
            assert np.bincount(view.labels("val"), minlength=4).tolist() == [10] * 4
            vals.append(set(val_ids))
    assert vals[0] == vals[3] and vals[0] != vals[1] and vals[1] != vals[2]


def test_recarving_is_the_prepare_rule_on_the_rows_in_id_order(cache):
    """The split of a seed is validation_rows on the train + val rows sorted by image id: it depends on the
    images and the seed, not on how prepare carved them."""
    out, _ = cache
    with FeatureStore(out / "pooled.h5") as store:
        ids = np.array(store.ids("train") + store.ids("val"), dtype=object)
        labels = np.concatenate([store.labels("train"), store.labels("val")])
        order = np.argsort(ids)
        rng = np.random.default_rng([5, S.CARVE_STREAM])
        expected = set(ids[order][validation_rows(labels[order], 4, 0.25, rng)])
        assert set(S.recarve(store, 0.25, 5).ids("val")) == expected


def test_the_test_split_is_never_used_for_fitting(caches, monkeypatch, tmp_path):
    """Every read of a feature file (pooled, cut cache) while a head fits is of the train or val split
    (re-carved or not): the test split is read only to score."""
    out, params = caches
    log: list[str] = []
    import pipeline.heads.base as H

    read, score = FeatureStore.read, H.split_top1

    def spy_read(self, split, *args, **kwargs):
        log.append(split)
        return read(self, split, *args, **kwargs)

    def spy_score(*args):  # the scoring inside fit_and_score, after the fit
        log.append("<score>")
        try:
            return score(*args)
        finally:
            log.append("</score>")

    monkeypatch.setattr(FeatureStore, "read", spy_read)
    monkeypatch.setattr(H, "split_top1", spy_score)
    for splits in (False, True):
        log.clear()
        configurations = ["heads.mlp", "finetune.top", "head"] if splits else ["heads.mlp"]
        summary = run_stage(out, with_seeds(params, values=[0, 1], configurations=configurations, splits=splits),
                            tmp_path / "seeds")
        assert {c["n_train"] for c in summary["configurations"].values()} == {18}  # 6 of each of 3 classes
        fitting, scoring = [], False
        for entry in log:
            scoring = {"<score>": True, "</score>": False}.get(entry, scoring)
            if entry[0] != "<":
                (fitting if not scoring else []).append(entry)
        assert log.count("<score>") == 2 * len(configurations)
        assert fitting and set(fitting) <= {"train", "val"}, splits


# -- compare ----------------------------------------------------------------------------------------
def test_compare_shows_mean_and_sd_over_seeds_beside_the_single_run(cache, tmp_path):
    out, params = cache
    metrics = []
    for key in ("head", "heads.mlp"):
        train.run(params, out / "pooled.h5", out / "splits.json", tmp_path / f"{key}.npz", key=key)
        folder = tmp_path / layout.evaluation_dir(key)
        evaluate.run(out / "pooled.h5", tmp_path / f"{key}.npz", folder, layout.head_name(key))
        metrics.append(folder / layout.METRICS)
    summary = run_stage(out, with_seeds(params, values=[0, 1, 2]), tmp_path / "seeds")
    assert list(summary["configurations"]) == ["heads.mlp"]  # the default: the stochastic configurations
    mlp = summary["configurations"]["heads.mlp"]
    single = json.loads(metrics[1].read_text())["test"]["top1"]
    assert mlp["top1"][0] == single  # seed 0 is the pipeline's own seed: the single run is one of the fits
    compare.run(metrics, tmp_path / "comparison", seeds_path=tmp_path / "seeds.json")
    table = (tmp_path / "comparison.md").read_text()
    assert "over seeds: mean ± sd" in table
    row = next(line for line in table.splitlines() if line.startswith("| mlp |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2].startswith(f"{single:.4f} (") and cells[3] == f"{mlp['mean']:.4f} ± {mlp['sd']:.4f} (3 seeds)"
    head_row = next(line for line in table.splitlines() if line.startswith("| head | logistic |"))
    assert head_row.split("|")[4].strip() == ""  # not repeated: nothing beside its figure
    run_stage(out, params, tmp_path / "off")  # off: the table has no such column
    compare.run(metrics, tmp_path / "plain", seeds_path=tmp_path / "off.json")
    assert "over seeds" not in (tmp_path / "plain.md").read_text()


# -- params -------------------------------------------------------------------------------------------
def test_the_default_configurations_are_those_that_vary_with_the_seed(cache):
    _, params = cache
    assert [c.key for c in with_seeds(params, values=[0, 1]).seed_configs()] == ["heads.mlp"]
    assert [c.key for c in with_seeds(params, values=[0, 1], splits=True).seed_configs()] == ["head", "heads.mlp",
                                                                                             "heads.ridge"]
    shipped = parse_params({"seeds": yaml.safe_load((ROOT / "params.yaml").read_text())["seeds"]}).seeds
    assert shipped == SeedsParams() and shipped.values == [] and not shipped.splits  # off: it costs refits


@pytest.mark.parametrize("seeds, message", [
    ({"values": [3]}, r"seeds.values: give at least two seeds"),
    ({"values": [1, 1]}, r"seeds.values: each seed once"),
    ({"values": [0, 2**32]}, r"seeds.values: seeds must be 0 <= seed < 2\*\*32"),
    ({"configurations": ["heads.nope"]}, r"seeds.configurations: no head configuration 'heads.nope'; valid: \['head', "),
    ({"configurations": ["heads.ridge"]}, r"heads.ridge \(ridge\) fits the same head whatever the seed.*seeds.splits: true"),
    ({"configurations": []}, r"seeds.configurations: name each configuration once, at least one"),
    ({"splits": "yes"}, r"seeds.splits: Input should be a valid boolean"),
])
def test_bad_seeds_params_name_the_key(seeds, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"heads": {"ridge": {"kind": "ridge"}}, "seeds": seeds})
