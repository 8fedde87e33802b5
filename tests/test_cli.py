"""The command line reports user errors as one clear line and exit status 2, with no traceback."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import layout
from tests.conftest import subprocess_env


def run_cli(tmp_path, params, *args):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env())


def test_bad_params_value(tmp_path):
    result = run_cli(tmp_path, {"head": {"kind": "svm"}}, "prepare")
    assert result.returncode == 2
    assert result.stderr.startswith("error: params: head.kind: 'svm' is not a known head; valid choices:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_missing_dataset(tmp_path):
    result = run_cli(tmp_path, {"data": {"source": "nowhere.tar.gz"}}, "prepare")
    assert result.returncode == 2 and "data.source 'nowhere.tar.gz' does not exist" in result.stderr


def test_a_checkpoint_outside_the_checkpoints_folder_is_refused_and_one_inside_is_hashed(tmp_path):
    """The weights stage: DVC tracks data/checkpoints, so a checkpoint path elsewhere could go stale unseen."""
    outside = tmp_path / "elsewhere" / "r18.pth"
    outside.parent.mkdir()
    outside.write_bytes(b"weights")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"backbone": {"weights": str(outside)}}))

    def weights_stage():
        return subprocess.run([sys.executable, "-m", "pipeline.stages.weights"], capture_output=True, text=True,
                              cwd=tmp_path, env=subprocess_env())

    result = weights_stage()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: backbone.weights {str(outside)!r} is a checkpoint outside data/checkpoints/")
    assert f"ln -s {outside} data/checkpoints/" in result.stderr and not (tmp_path / "data" / "prepared").exists()
    (tmp_path / "data" / "checkpoints").mkdir(parents=True)
    (tmp_path / "data" / "checkpoints" / "r18.pth").symlink_to(outside)  # a link in the folder counts
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"backbone": {"weights": "data/checkpoints/r18.pth"}}))
    assert weights_stage().returncode == 0
    record = json.loads((tmp_path / "data" / "prepared" / "weights.json").read_text())
    assert record == {"weights": "data/checkpoints/r18.pth", "sha256": hashlib.sha256(b"weights").hexdigest()}


def test_missing_feature_file_and_missing_head_file(tmp_path, cifar_folder):
    params = {"data": {"source": str(cifar_folder)}}
    assert run_cli(tmp_path, params, "prepare").returncode == 0
    result = run_cli(tmp_path, params, "train")
    assert result.returncode == 2, result.stderr
    assert "feature file data/features/pooled.h5 does not exist; run the extract stage first" in result.stderr
    result = run_cli(tmp_path, params, "evaluate", "--config", "head")
    assert result.returncode == 2 and "head file models/head.npz does not exist; run the train stage first" in result.stderr


def test_bad_image_found_by_a_decoding_worker_is_one_clear_line(tmp_path, cifar_folder):
    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root)
    (root / "test" / "cat" / "0001.jpg").write_bytes(b"garbage")
    params = {"data": {"source": str(root)},
              "backbone": {"name": "resnet18", "weights": None, "input_size": 32, "num_workers": 1}}
    assert run_cli(tmp_path, params, "prepare").returncode == 0
    result = run_cli(tmp_path, params, "extract", "--no-progress")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image 'test/cat/0001.jpg'"), result.stderr
    assert not (tmp_path / "data" / "features" / "pooled.h5").exists()


# -- disk faults: one line that names the file and says what to do, outputs left whole --------
@pytest.fixture(scope="module")
def project(cifar_folder, tmp_path_factory):
    """A project whose stages have all run once: splits, features, head, evaluation."""
    from pipeline.stages import evaluate, extract, prepare, train

    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "data": {"source": str(cifar_folder)},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 32, "batch_size": 8, "commit_rows": 8},
    }))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage in (prepare, extract, train, evaluate):
            assert stage.main(["--params", "params.yaml"] + (["--no-progress"] if stage is extract else [])) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def in_project(project, tmp_path, monkeypatch):
    shutil.copytree(project, tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    return tmp_path / "p"


def disk_full_savez(file, *args, **kwargs):
    """np.savez on a full disk: part of the file is written, then write() fails (naming no file)."""
    file.write(b"PK\x03\x04 partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_disk_full_while_writing_parts_is_one_line(in_project, monkeypatch, capsys):
    from pipeline.stages import extract

    shutil.rmtree("data/features")
    monkeypatch.setattr(np, "savez", disk_full_savez)
    assert extract.main(["--params", "params.yaml", "--no-progress"]) == 2
    assert one_line_error(capsys) == ("error: No space left on device (data/features/.pooled.h5.partial/train-000000.npz): "
                                      "free some disk space and run the stage again")
    assert not list(Path("data/features/.pooled.h5.partial").glob("*npz"))  # no half-written part left


@pytest.mark.parametrize("fault, expected", [
    ("disk full", "No space left on device (models/head.npz): free some disk space and run the stage again"),
    # a read-only folder (chmod 0o555 does not stop root, who runs the tests here: the kernel's answer is simulated)
    ("read-only", "Read-only file system (models/head.npz): the file system is mounted read-only: make it writable "
                  "and run the stage again"),
])
def test_disk_fault_while_saving_the_head_is_one_line(fault, expected, in_project, monkeypatch, capsys):
    import builtins

    from pipeline.heads import base
    from pipeline.stages import train

    before = Path("models/head.npz").read_bytes()
    if fault == "disk full":
        monkeypatch.setattr(np, "savez", disk_full_savez)
    else:
        def read_only_open(path, mode="r", *args, **kwargs):
            if "w" in mode:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return builtins.open(path, mode, *args, **kwargs)

        monkeypatch.setattr(base, "open", read_only_open, raising=False)
    assert train.main(["--params", "params.yaml"]) == 2
    assert one_line_error(capsys) == f"error: {expected}"
    assert Path("models/head.npz").read_bytes() == before
    assert sorted(p.name for p in Path("models").iterdir()) == ["head.npz"]


def test_failure_while_writing_the_last_file_leaves_the_previous_evaluation_untouched(in_project, monkeypatch, capsys):
    import csv

    from pipeline.stages import evaluate
    from pipeline.store import predictions

    def outputs() -> dict:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path("evaluation").iterdir() if p.is_file()}

    before = outputs()
    assert {"metrics.json", "details.json", "test_predictions.csv"} <= set(before)

    class DiskFullOnThePredictions:  # the csv module, whose writer fills the disk halfway through the predictions
        def __getattr__(self, name):
            return getattr(csv, name)

        def writer(self, f):
            writer = csv.writer(f)
            if not f.name.endswith(layout.TEST_PREDICTIONS):
                return writer

            def writerows(rows):
                f.write("id,actual,predicted,confidence\nhalf")
                raise OSError(errno.ENOSPC, "No space left on device", f.name)

            return type("HalfWriter", (), {"writerow": staticmethod(writer.writerow), "writerows": staticmethod(writerows)})()

    monkeypatch.setattr(predictions, "csv", DiskFullOnThePredictions())
    assert evaluate.main(["--params", "params.yaml"]) == 2
    assert one_line_error(capsys) == (f"error: No space left on device (evaluation/{layout.TEST_PREDICTIONS}): "
                                      "free some disk space and run the stage again")
    assert outputs() == before  # metrics.json and the plots as they were, nothing half-written beside them
