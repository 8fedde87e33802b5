"""The mistakes stage on a small real run: heads trained and evaluated on a real cache of CIFAR-10 images, their
mistakes drawn from the real test images."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.core import layout
from pipeline.core.config import MistakesParams
from pipeline.core.errors import BadImageError, PipelineError
from pipeline.data.sources import Splits
from pipeline.reports.mistakes import load_thumbnails
from pipeline.stages import evaluate, mistakes, train

CONFIGS = ["head", "heads.knn", "heads.ridge", "heads.nearest_centroid"]


@pytest.fixture(scope="module")
def evaluated(caches, tmp_path_factory):
    """The main head and three compared heads, trained and evaluated as the stages do, in the pipeline's layout."""
    out, params = caches
    root = tmp_path_factory.mktemp("mistakes")
    for key in CONFIGS:
        train.run(params, out / "pooled.h5", out / "splits.json", root / layout.head_file(key), key=key)
        evaluate.run(out / "pooled.h5", root / layout.head_file(key), root / layout.evaluation_dir(key),
                     layout.head_name(key))
    return out, root, {key: root / layout.evaluation_dir(key) for key in CONFIGS}


def files_in(folder):
    return {name: folder / path.name for name, path in layout.mistakes_files().items()}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def report(evaluated, tmp_path_factory):
    out, _, dirs = evaluated
    settings = MistakesParams(grid_size=4, columns=3, examples_per_class=2)
    files = files_in(tmp_path_factory.mktemp("report"))
    heads = mistakes.run(settings, out / "splits.json", dirs, files)
    return heads, files, settings


def test_the_best_head_is_the_one_with_the_highest_test_top1(evaluated, report):
    _, _, dirs = evaluated
    heads, _, _ = report
    top1 = {key: json.loads((d / layout.METRICS).read_text())["test"]["top1"] for key, d in dirs.items()}
    main, best = heads
    assert (main.role, main.config, best.role) == ("main", "head", "best")
    assert top1[best.config] == max(top1.values())
    assert [k for k in CONFIGS if top1[k] == max(top1.values())][0] == best.config  # ties: the first, as compare


def test_the_worst_mistakes_are_wrong_and_sorted_by_confidence(evaluated, report):
    out, _, dirs = evaluated
    heads, _, settings = report
    splits = Splits.load(out / "splits.json")
    truth = {k: splits.classes[y] for k, y in zip(splits.splits["test"].keys, splits.splits["test"].labels)}
    for m in heads:
        predictions = rows(dirs[m.config] / layout.TEST_PREDICTIONS)
        wrong = [r for r in predictions if r["actual"] != r["predicted"]]
        assert m.n_wrong == len(wrong) > settings.grid_size  # a random-init backbone: plenty of mistakes to choose from
        assert len(m.worst) == settings.grid_size
        for p in m.worst:
            assert p.actual == truth[p.id] != p.predicted  # really wrong, against the labels of splits.json
        confidences = [p.confidence for p in m.worst]
        assert confidences == sorted(confidences, reverse=True)
        # ... and no wrong prediction left out is more confident than the last one shown
        shown = {p.id for p in m.worst}
        assert max(float(r["confidence"]) for r in wrong if r["id"] not in shown) <= confidences[-1]


def test_each_class_gets_its_most_confused_class_from_the_confusion_matrix(evaluated, report):
    _, _, dirs = evaluated
    heads, _, settings = report
    for m in heads:
        details = json.loads((dirs[m.config] / "details.json").read_text())
        classes, cm = details["classes"], np.array(details["test"]["confusion_matrix"])
        assert [c.actual for c in m.confusions] == classes
        for i, c in enumerate(m.confusions):
            off = cm[i].copy()
            off[i] = 0
            assert (c.count, c.total, c.wrong) == (off.max(), cm[i].sum(), off.sum())
            if off.max() == 0:
                assert c.predicted is None and c.examples == []
                continue
            assert off[classes.index(c.predicted)] == off.max()
            assert 0 < len(c.examples) == min(settings.examples_per_class, c.count)
            assert all((e.actual, e.predicted) == (c.actual, c.predicted) for e in c.examples)
            assert [e.confidence for e in c.examples] == sorted((e.confidence for e in c.examples), reverse=True)


def test_the_report_is_written_as_one_set_with_the_grid_image(report):
    heads, files, settings = report
    assert all(p.exists() and p.stat().st_size > 0 for p in files.values())
    assert sorted(p.name for p in files["report"].parent.iterdir()) == sorted(p.name for p in files.values())
    with Image.open(files["main_worst"]) as grid:
        width, height = grid.size
    with Image.open(files["main_confused"]) as confused:
        assert confused.size[1] > 2 * height / 3  # one row per class (3), against two rows of the grid
    assert width > height > 100  # 3 columns, 2 rows
    data = json.loads(files["data"].read_text())
    assert [p["id"] for p in data["main"]["worst"]] == [p.id for p in heads[0].worst]
    text = files["report"].read_text()
    assert all(f"`{p.id}`" in text for p in heads[0].worst)
    assert "main_worst.png" in text


def test_the_images_drawn_are_the_test_images_by_id(caches, cifar_folder, report):
    out, _ = caches
    heads, _, _ = report
    ids = {p.id for p in heads[0].worst}
    images = load_thumbnails(Splits.load(out / "splits.json"), ids)
    assert images.keys() == ids
    for key, image in images.items():  # CIFAR's 32 px are below the thumbnail size: the pixels as they are
        np.testing.assert_array_equal(image, np.asarray(Image.open(cifar_folder / key).convert("RGB")))


def _dies_in_a_child(*args):
    """:func:`load_thumbnails`, but a process forked from the test's dies at once."""
    if os.getpid() != _dies_in_a_child.parent:
        os._exit(9)
    return load_thumbnails(*args)


def test_images_read_while_other_work_runs_make_the_same_pictures(evaluated, report, tmp_path, monkeypatch):
    """The report stage runs compare while the images are read in a forked process (``meanwhile``): the same
    files as read one after the other, the other work done once, here; a reader that dies is replaced by a
    read here; an image gone from the dataset stops it with the reader's message, and nothing is written."""
    out, _, dirs = evaluated
    heads, files, settings = report
    ran = []
    again = files_in(tmp_path / "again")
    mistakes.run(settings, out / "splits.json", dirs, again, meanwhile=lambda: ran.append(os.getpid()))
    assert ran == [os.getpid()]
    assert {name: path.read_bytes() for name, path in again.items()} == {n: p.read_bytes() for n, p in files.items()}

    monkeypatch.setattr(mistakes, "load_thumbnails", _dies_in_a_child)
    monkeypatch.setattr(_dies_in_a_child, "parent", os.getpid(), raising=False)
    killed = files_in(tmp_path / "killed")  # a reader that dies (killed for memory, say): read here instead
    mistakes.run(settings, out / "splits.json", dirs, killed, meanwhile=lambda: None)
    assert killed["main_worst"].read_bytes() == files["main_worst"].read_bytes()
    monkeypatch.undo()

    splits = json.loads((out / "splits.json").read_text())
    shutil.copytree(splits["source"], tmp_path / "images")
    gone = heads[0].worst[0].id
    (tmp_path / "images" / gone).unlink()
    (tmp_path / "splits.json").write_text(json.dumps(splits | {"source": str(tmp_path / "images")}))
    with pytest.raises(BadImageError, match=f"cannot read image '{gone}'"):
        mistakes.run(settings, tmp_path / "splits.json", dirs, files_in(tmp_path / "broken"), meanwhile=lambda: None)
    assert not (tmp_path / "broken").exists()


def copy_evaluations(dirs, dest):
    copies = {}
    for key, folder in dirs.items():
        copies[key] = dest / key
        copies[key].mkdir(parents=True)
        for name in (layout.METRICS, layout.TEST_PREDICTIONS):
            (copies[key] / name).write_text((folder / name).read_text())
    return copies


def test_a_best_head_other_than_the_main_head_gets_its_own_pictures(evaluated, report, tmp_path):
    out, _, dirs = evaluated
    copies = copy_evaluations(dirs, tmp_path / "evaluation")
    metrics = json.loads((copies["heads.ridge"] / layout.METRICS).read_text())
    metrics["test"]["top1"] = 1.0  # ridge is now the best head
    (copies["heads.ridge"] / layout.METRICS).write_text(json.dumps(metrics))
    files = files_in(tmp_path / "report")
    main, best = mistakes.run(MistakesParams(grid_size=4, columns=3, examples_per_class=2), out / "splits.json",
                              copies, files)
    assert (main.config, best.config, best.name, best.kind) == ("head", "heads.ridge", "ridge", "ridge")
    ridge = rows(copies["heads.ridge"] / layout.TEST_PREDICTIONS)
    worst = sorted((r for r in ridge if r["actual"] != r["predicted"]), key=lambda r: -float(r["confidence"]))
    assert [p.confidence for p in best.worst] == [float(r["confidence"]) for r in worst[:4]]
    assert [p.id for p in main.worst] == [p.id for p in report[0][0].worst]  # the main head's, as before
    text = files["report"].read_text()
    assert "## The main head: head" in text and "## The best head: ridge (ridge" in text and "best_worst.png" in text
    assert files["best_worst"].read_bytes() != files["main_worst"].read_bytes()


def test_only_a_head_whose_mistakes_changed_is_drawn_again(evaluated, tmp_path, capsys):
    """A head swap changes the main head only: the best head's pictures stay as drawn (same bytes, same
    file), the main head's are drawn again; a second run with nothing changed draws nothing."""
    out, _, dirs = evaluated
    copies = copy_evaluations(dirs, tmp_path / "evaluation")
    metrics = json.loads((copies["heads.ridge"] / layout.METRICS).read_text())
    metrics["test"]["top1"] = 1.0  # ridge is the best head throughout
    (copies["heads.ridge"] / layout.METRICS).write_text(json.dumps(metrics))
    files, settings = files_in(tmp_path / "report"), MistakesParams(grid_size=4, columns=3, examples_per_class=2)
    mistakes.run(settings, out / "splits.json", copies, files)
    drawn = {name: (path.stat().st_ino, path.read_bytes()) for name, path in files.items() if path.suffix == ".png"}
    capsys.readouterr()
    mistakes.run(settings, out / "splits.json", copies, files)
    assert "mistakes of the best and main head unchanged: their pictures kept" in capsys.readouterr().out
    assert {name: (files[name].stat().st_ino, files[name].read_bytes()) for name in drawn} == drawn
    predictions = rows(copies["head"] / layout.TEST_PREDICTIONS)  # the main head now errs on one more image
    right = next(r for r in predictions if r["actual"] == r["predicted"])
    right["predicted"] = next(r["actual"] for r in predictions if r["actual"] != right["actual"])
    with open(copies["head"] / layout.TEST_PREDICTIONS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(predictions[0]))
        writer.writeheader()
        writer.writerows(predictions)
    main, _ = mistakes.run(settings, out / "splits.json", copies, files)
    assert "the best head unchanged" in capsys.readouterr().out
    for name in ("best_worst", "best_confused"):
        assert (files[name].stat().st_ino, files[name].read_bytes()) == drawn[name]  # not rewritten
    assert files["main_confused"].stat().st_ino != drawn["main_confused"][0]  # drawn again
    assert json.loads(files["data"].read_text())["main"]["n_wrong"] == main.n_wrong


def test_predictions_of_an_older_evaluate_are_refused_with_what_to_do(evaluated, tmp_path):
    out, _, dirs = evaluated
    old = copy_evaluations(dirs, tmp_path / "evaluation")
    for folder in old.values():  # id, actual, predicted: no confidence column
        lines = (folder / layout.TEST_PREDICTIONS).read_text().splitlines()
        (folder / layout.TEST_PREDICTIONS).write_text("\n".join(",".join(l.split(",")[:3]) for l in lines) + "\n")
    with pytest.raises(PipelineError, match=r"lacks the columns \['confidence'\].*run the train stages again"):
        mistakes.run(MistakesParams(), out / "splits.json", old, files_in(tmp_path / "report"))
    assert not (tmp_path / "report" / "mistakes.md").exists()


@pytest.mark.parametrize("raw, message", [
    ({"mistakes": {"grid_size": 0}}, r"mistakes.grid_size: Input should be greater than 0"),
    ({"mistakes": {"examples_per_class": "4"}}, r"mistakes.examples_per_class: Input should be a valid integer"),
    ({"mistakes": {"grid": 4}}, r"mistakes.grid: Extra inputs are not permitted"),
])
def test_bad_mistakes_params_name_the_key(raw, message):
    from pipeline.core.config import parse_params
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_params(raw)
