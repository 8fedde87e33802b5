"""The command line reports user errors as one clear line and exit status 2, with no traceback."""

import shutil
import subprocess
import sys

import yaml


def run_cli(tmp_path, params, *args):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=tmp_path)


def test_bad_params_value(tmp_path):
    result = run_cli(tmp_path, {"head": {"kind": "svm"}}, "prepare")
    assert result.returncode == 2
    assert result.stderr.startswith("error: params: head.kind: 'svm' is not a known head; valid choices:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_missing_dataset(tmp_path):
    result = run_cli(tmp_path, {"data": {"source": "nowhere.tar.gz"}}, "prepare")
    assert result.returncode == 2 and "data.source 'nowhere.tar.gz' does not exist" in result.stderr


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
