"""The command line reports user errors as one clear line and exit status 2, with no traceback."""

import subprocess
import sys

import yaml


def run_cli(tmp_path, params, *args):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "pipeline", "--params", str(tmp_path / "params.yaml"), *args],
                          capture_output=True, text=True, cwd=tmp_path)


def test_bad_params_value(tmp_path):
    result = run_cli(tmp_path, {"head": {"kind": "svm"}}, "prepare", "--out", "s.json")
    assert result.returncode == 2
    assert result.stderr.startswith("error: params: head.kind: 'svm' is not a known head; valid choices:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.json").exists()


def test_missing_dataset_and_missing_feature_file(tmp_path):
    result = run_cli(tmp_path, {"data": {"source": "nowhere.tar.gz"}}, "prepare", "--out", "s.json")
    assert result.returncode == 2 and "data.source 'nowhere.tar.gz' does not exist" in result.stderr
    result = run_cli(tmp_path, {}, "evaluate", "--features", "missing.h5", "--head", "missing.npz")
    assert result.returncode == 2 and "head file missing.npz does not exist; run the train stage first" in result.stderr


def test_bad_image_found_by_a_decoding_worker_is_one_clear_line(tmp_path, cifar_folder):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root)
    (root / "test" / "cat" / "0001.jpg").write_bytes(b"garbage")
    params = {"data": {"source": str(root)},
              "backbone": {"name": "resnet18", "weights": None, "input_size": 32, "num_workers": 1}}
    assert run_cli(tmp_path, params, "prepare", "--out", "s.json").returncode == 0
    result = run_cli(tmp_path, params, "extract", "--splits", "s.json", "--out", "f.h5", "--no-progress")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image 'test/cat/0001.jpg'"), result.stderr
    assert not (tmp_path / "f.h5").exists()
