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
