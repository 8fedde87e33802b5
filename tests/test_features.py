import json

import h5py
import numpy as np
import pytest

from pipeline.backbone.backbones import load_backbone
from pipeline.backbone.extract import OnePass, extract_features, feature_spec
from pipeline.core.errors import FeatureStoreError
from pipeline.data.sources import make_splits, open_source
from pipeline.store.features import FORMAT_VERSION, FeatureStore, PartialFeatures
from tests.conftest import interrupt_after, subprocess_env


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("resnet18", None, 32, seed=0)


@pytest.fixture(scope="module")
def splits(cifar_folder):
    return make_splits(open_source(cifar_folder), 0.25, None, seed=0)


def run(splits, backbone, out, dtype="float32", precision="float32", **kwargs):
    spec = feature_spec(splits, backbone, None, dtype, init_seed=0, precision=precision)
    files = extract_features(splits, open_source(splits.source), OnePass(backbone), {"pooled": (spec, out)},
                             batch_size=4, num_workers=0, progress=False, **kwargs)
    return files["pooled"]


def interrupt_run(n_parts, splits, backbone, out, monkeypatch):
    """Run an extraction that is interrupted once ``n_parts`` parts are committed; return them."""
    written = interrupt_after(n_parts, lambda: run(splits, backbone, out, commit_rows=8), monkeypatch)
    assert not out.exists()
    return written


@pytest.fixture(scope="module")
def feature_file(splits, backbone, tmp_path_factory):
    return run(splits, backbone, tmp_path_factory.mktemp("features") / "f.h5", commit_rows=8)


def test_layout_and_attributes(feature_file, splits):
    with h5py.File(feature_file) as h5:
        assert set(h5) == {"train", "val", "test"}
        for name, split in splits.splits.items():
            assert h5[name]["features"].shape == (len(split), 512)
            assert h5[name]["features"].dtype == np.float32
            assert h5[name]["labels"][:].tolist() == split.labels
            assert [s.decode() for s in h5[name]["ids"][:]] == split.keys
        attrs = dict(h5.attrs)
    assert attrs["backbone"] == "resnet18" and attrs["weights"] == "none"
    assert attrs["dataset_fingerprint"] == splits.fingerprint
    assert attrs["input_size"] == 32 and attrs["feature_dim"] == 512
    assert "mean" in attrs["preprocessing"]
    # nothing half-written left beside it
    assert [p.name for p in feature_file.parent.iterdir()] == ["f.h5"]


def test_features_match_the_backbone_run_directly(feature_file, splits, backbone):
    import torch

    from pipeline.data.images import decode_image

    keys = splits.splits["test"].keys[:3]
    images = torch.stack([decode_image(raw, backbone.preprocessing.geometry) for _, raw in open_source(splits.source).stream(keys)])
    with torch.inference_mode():
        direct = backbone(images).numpy()
    with FeatureStore(feature_file) as store:
        cached, _ = store.load("test")
    np.testing.assert_allclose(cached[:3], direct, rtol=1e-4, atol=1e-5)


def test_float16_storage(splits, backbone, feature_file, tmp_path):
    out = run(splits, backbone, tmp_path / "f16.h5", dtype="float16")
    with FeatureStore(out) as half, FeatureStore(feature_file) as full:
        assert half._h5["train"]["features"].dtype == np.float16
        X16, _ = half.load("train")
        X32, _ = full.load("train")
    assert X16.dtype == np.float32  # read back as float32
    np.testing.assert_allclose(X16, X32, rtol=1e-2, atol=1e-2)


def test_interrupted_extraction_resumes_bit_for_bit(splits, backbone, feature_file, tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    written = interrupt_run(2, splits, backbone, out, monkeypatch)
    original, resumed = PartialFeatures.write_part, []
    monkeypatch.setattr(PartialFeatures, "write_part", lambda self, s, i, f, v: (resumed.append((s, i)), original(self, s, i, f, v)))
    run(splits, backbone, out, commit_rows=8)
    assert not set(resumed) & set(written)  # committed parts were not recomputed
    with FeatureStore(out) as a, FeatureStore(feature_file) as b:
        for split in ("train", "val", "test"):
            assert np.array_equal(a.load(split)[0], b.load(split)[0])


def test_partial_run_with_other_settings_is_discarded(splits, backbone, tmp_path):
    out = tmp_path / "f.h5"
    other = feature_spec(splits, backbone, "other", "float32", init_seed=0, precision="float32")
    partial = PartialFeatures(out, other, part_rows=8)
    partial.write_part("train", 0, np.full((8, 512), 7.0, np.float32), np.ones(8, bool))
    run(splits, backbone, out, commit_rows=8)
    with FeatureStore(out) as store:
        assert not (store.load("train")[0][:8] == 7.0).all()


def test_file_of_an_older_format_is_refused_with_what_to_do(feature_file, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(feature_file.read_bytes())
    with h5py.File(old, "r+") as h5:
        h5.attrs["format_version"] = 1
    with pytest.raises(FeatureStoreError, match=f"format version 1, this version of the pipeline reads {FORMAT_VERSION}: run the extract"):
        FeatureStore(old)


def test_truncated_file_is_refused(feature_file, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(feature_file.read_bytes()[: feature_file.stat().st_size // 2])
    with pytest.raises(FeatureStoreError, match="truncated"):
        FeatureStore(broken)


def test_mismatched_settings_are_refused_with_the_difference(feature_file):
    with FeatureStore(feature_file) as store:
        store.check({"backbone": "resnet18", "input_size": 32})
        with pytest.raises(FeatureStoreError, match="input_size: the file has 32, the current settings want 224"):
            store.check({"backbone": "resnet18", "input_size": 224})


def test_nan_and_out_of_range_labels_are_caught(feature_file, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(feature_file.read_bytes())
    with h5py.File(bad, "r+") as h5:
        h5["train"]["features"][3, 5] = np.nan
        h5["test"]["labels"][0] = 99
    with FeatureStore(bad) as store:
        with pytest.raises(FeatureStoreError, match="NaN or inf.*row 3"):
            store.load("train")
        with pytest.raises(FeatureStoreError, match="labels outside 0..2"):
            store.load("test")


def test_unreadable_image_is_skipped_and_reported(cifar_folder, backbone, tmp_path):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root)
    (root / "test" / "ship" / "0002.jpg").write_bytes(b"\x89PNG broken")
    splits = make_splits(open_source(root), 0.25, None, seed=0)
    with pytest.raises(Exception, match="test/ship/0002.jpg"):
        run(splits, backbone, tmp_path / "strict.h5")
    out = run(splits, backbone, tmp_path / "f.h5", skip_bad=True)
    with FeatureStore(out) as store:
        assert "test/ship/0002.jpg" not in store.ids("test")
        assert store.n_rows("test") == len(splits.splits["test"]) - 1
        assert [s.decode() for s in store._h5["test"]["skipped"][:]] == ["test/ship/0002.jpg"]


def test_same_params_same_features_and_metrics(tmp_path):
    """Two independent runs of every stage agree exactly."""
    import json

    from pipeline.core.config import parse_params
    from pipeline.stages import evaluate, extract, prepare, train
    from tests.conftest import CIFAR_ARCHIVE

    params = parse_params({
        "data": {"source": str(CIFAR_ARCHIVE), "subset_per_class": 4},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 32, "batch_size": 16},
    })
    outputs = []
    for run_dir in (tmp_path / "a", tmp_path / "b"):
        prepare.run(params, run_dir / "splits.json")
        extract.run(params, run_dir / "splits.json", run_dir / "f.h5", progress=False)
        train.run(params, run_dir / "f.h5", run_dir / "splits.json", run_dir / "head.npz")
        metrics = evaluate.run(run_dir / "f.h5", run_dir / "head.npz", run_dir / "eval")
        with FeatureStore(run_dir / "f.h5") as store:
            outputs.append(({s: store.load(s)[0] for s in store.splits}, metrics))
        assert (run_dir / "splits.json").read_text() == (tmp_path / "a" / "splits.json").read_text()
    (fa, ma), (fb, mb) = outputs
    assert all(np.array_equal(fa[s], fb[s]) for s in fa)
    ma.pop("fit_seconds"), mb.pop("fit_seconds")
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)


@pytest.mark.slow
def test_kill_9_mid_extraction_then_resume_bit_for_bit(tmp_path):
    """A real extraction process is SIGKILLed once some parts are committed; a rerun resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from pipeline.core.config import load_params
    from pipeline.stages import extract, prepare
    from tests.conftest import CIFAR_ARCHIVE

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "data": {"source": str(CIFAR_ARCHIVE), "subset_per_class": 20},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 112, "batch_size": 8, "commit_rows": 16},
    }))
    params = load_params(tmp_path / "params.yaml")
    splits_path, out = tmp_path / "data" / "prepared" / "splits.json", tmp_path / "data" / "features" / "pooled.h5"
    prepare.run(params, splits_path)
    partial = out.parent / ".pooled.h5.partial"
    proc = subprocess.Popen(  # the extract stage, writing its fixed paths under tmp_path
        [sys.executable, "-m", "pipeline", "extract", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        env=subprocess_env(),
    )
    deadline = time.monotonic() + 120
    while len(list(partial.glob("*.npz"))) < 3:
        assert proc.poll() is None, "extraction ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    committed = sorted(partial.glob("*.npz"))
    assert 3 <= len(committed) < 25  # 400 images in parts of 16
    # a crash of the machine can leave the last part committed but truncated: it is computed again
    committed[-1].write_bytes(committed[-1].read_bytes()[:1000])

    extract.run(params, splits_path, out, progress=False)  # resumes
    extract.run(params, splits_path, tmp_path / "clean" / "f.h5", progress=False)  # uninterrupted
    assert not partial.exists()
    with FeatureStore(out) as resumed, FeatureStore(tmp_path / "clean" / "f.h5") as clean:
        for split in ("train", "val", "test"):
            assert np.array_equal(resumed.load(split)[0], clean.load(split)[0])
            assert resumed.ids(split) == clean.ids(split)


def test_linear_head_streams_a_feature_file_too_large_for_memory(feature_file, splits, tmp_path, monkeypatch, capsys):
    """With the memory budget exceeded, train reads the features in blocks and gets the same head."""
    from pipeline.core.config import parse_params
    from pipeline.core.head_registry import head_class
    from pipeline.heads import linear
    from pipeline.heads.base import load_head
    from pipeline.stages import train

    splits.save(tmp_path / "splits.json")
    params = parse_params({"backbone": {"name": "resnet18", "weights": None, "input_size": 32},
                           "head": {"kind": "linear", "linear": {"weight_decay": 1.0}}})
    original, block_sizes = FeatureStore.read, []

    def read(self, split, start, stop, dtype=np.float32):
        block_sizes.append(stop - start)
        return original(self, split, start, stop, dtype)

    monkeypatch.setattr(FeatureStore, "block_rows", lambda self, max_bytes=0: 5)
    monkeypatch.setattr(FeatureStore, "read", read)
    monkeypatch.setattr(linear, "fits_in_memory", lambda nbytes: False)
    train.run(params, feature_file, tmp_path / "splits.json", tmp_path / "streamed.npz")
    assert "streaming them in blocks" in capsys.readouterr().out
    assert max(block_sizes) == 5  # never more than one block of rows at a time
    streamed, _ = load_head(tmp_path / "streamed.npz")
    assert streamed.fitted.streamed

    with FeatureStore(feature_file) as store:
        X, y = store.load("train")
        Xt, _ = store.load("test")
    in_memory = head_class("linear")(params.head_config().params).fit(X, y, n_classes=3)
    np.testing.assert_allclose(streamed.decision_function(Xt), in_memory.decision_function(Xt), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_torchrun_two_processes_give_the_single_process_features(splits, backbone, feature_file, tmp_path, monkeypatch):
    """2 CPU processes (gloo) each extract a contiguous shard; the combined file equals a 1-process run.

    The first launch is preceded by an interrupted single-process run, so the ranks also resume:
    parts already committed are not recomputed.
    """
    import subprocess
    import sys

    import yaml

    from pipeline.core.config import load_params
    from pipeline.store.features import expected_spec

    splits_path = tmp_path / "data" / "prepared" / "splits.json"
    splits_path.parent.mkdir(parents=True)
    splits.save(splits_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        # float32 as the reference file and the interrupted run (auto would be bfloat16 on a CPU with AMX)
        "backbone": {"name": "resnet18", "weights": None, "input_size": 32, "batch_size": 4, "commit_rows": 8,
                     "precision": "float32"},
        "data": {"decode": "full"},  # as run() above records it: the same settings, so the ranks resume its part
    }))
    out = tmp_path / "data" / "features" / "pooled.h5"
    assert interrupt_run(1, splits, backbone, out, monkeypatch) == [("train", 0)]

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "pipeline.stages.extract", "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=subprocess_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "by 2 processes" in result.stdout
    assert "resuming [rank 0/2]: 8 images already extracted" in result.stdout  # train part 0 is rank 0's
    assert "resuming [rank 1/2]" not in result.stdout
    assert not (out.parent / ".pooled.h5.partial").exists()
    with FeatureStore(out) as sharded, FeatureStore(feature_file) as single:
        sharded.check(expected_spec(load_params(tmp_path / "params.yaml"), splits_path))
        for split in ("train", "val", "test"):
            assert sharded.ids(split) == single.ids(split)
            np.testing.assert_allclose(sharded.load(split)[0], single.load(split)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_features(splits, backbone, feature_file, tmp_path):
    """backbone.compile: one compiled shape (the short last batch is padded), same features to rounding."""
    out = run(splits, backbone, tmp_path / "compiled.h5", commit_rows=8, compile=True)
    with FeatureStore(out) as compiled, FeatureStore(feature_file) as eager:
        for split in ("train", "val", "test"):
            assert compiled.ids(split) == eager.ids(split)
            np.testing.assert_allclose(compiled.load(split)[0], eager.load(split)[0], rtol=1e-3, atol=1e-4)


def test_compile_without_a_compiler_extracts_eagerly_and_says_so(splits, backbone, feature_file, tmp_path, monkeypatch,
                                                                 capsys):
    from pipeline.core import device

    monkeypatch.setattr(device, "compiler_available", lambda device: False)
    out = run(splits, backbone, tmp_path / "eager.h5", commit_rows=8, compile=True)
    assert "extract: compile is on but no C++ compiler was found" in capsys.readouterr().out
    with FeatureStore(out) as eager, FeatureStore(feature_file) as reference:
        for split in ("train", "val", "test"):
            assert np.array_equal(eager.load(split)[0], reference.load(split)[0])  # the eager arithmetic, bit for bit


# -- precision ---------------------------------------------------------------------------------
def test_bfloat16_extraction_is_recorded_close_to_float32_and_checked(splits, backbone, feature_file, tmp_path):
    from pipeline.core.config import parse_params
    from pipeline.store.features import expected_spec

    out = run(splits, backbone, tmp_path / "bf16.h5", precision="bfloat16")
    splits_path = tmp_path / "splits.json"
    splits_path.write_text(json.dumps({"fingerprint": splits.fingerprint}))
    want = lambda precision: expected_spec(parse_params({"backbone": {  # noqa: E731
        "name": "resnet18", "weights": None, "input_size": 32, "precision": precision}}), splits_path)
    with FeatureStore(out) as bf16, FeatureStore(feature_file) as fp32:
        assert bf16.spec.precision == "bfloat16" and fp32.spec.precision == "float32"
        for split in ("train", "val", "test"):
            a, b = bf16.load(split)[0], fp32.load(split)[0]
            assert not np.array_equal(a, b)  # really computed in bfloat16 (8 bits of mantissa) ...
            np.testing.assert_allclose(a, b, rtol=0.1, atol=0.05 * np.abs(b).max())  # ... and close to float32
        bf16.check(want("bfloat16"))
        bf16.check(want("auto"))  # auto: whichever the extracting machine has natively
        fp32.check(want("auto"))
        with pytest.raises(FeatureStoreError, match="precision: the file has 'bfloat16', the current settings want 'float32'"):
            bf16.check(want("float32"))


def test_precision_auto_is_bfloat16_only_where_the_hardware_has_it(monkeypatch):
    import torch

    from pipeline.core import device

    cpu = torch.device("cpu")
    for flags, expected in [({"avx2", "fma"}, "float32"), ({"avx512f", "avx512_bf16"}, "bfloat16"),
                            ({"amx_bf16", "amx_tile"}, "bfloat16")]:
        monkeypatch.setattr(device, "cpu_info", lambda flags=flags: ("a CPU", frozenset(flags)))
        assert device.resolve_precision("auto", cpu) == expected
        assert device.resolve_precision("float32", cpu) == "float32"
        assert device.resolve_precision("bfloat16", cpu) == "bfloat16"
    assert device.describe_cpu() == "a CPU; native bfloat16: amx_bf16"


def test_precision_params_are_validated_with_the_choices():
    from pipeline.core.config import parse_params
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"backbone.precision.*'auto', 'float32' or 'bfloat16'"):
        parse_params({"backbone": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"finetune.top.finetune.precision.*'auto', 'float32' or 'bfloat16'"):
        parse_params({"backbone": {"cut": "layer4"}, "finetune": {"top": {"finetune": {"precision": "half"}}}})


# -- damaged parts: discarded and computed again, never a stuck extraction ------------------
def equals_feature_file(out, feature_file):
    with FeatureStore(out) as a, FeatureStore(feature_file) as b:
        return all(np.array_equal(a.load(s)[0], b.load(s)[0]) and a.ids(s) == b.ids(s) for s in ("train", "val", "test"))


def record_writes(monkeypatch) -> list[tuple[str, int]]:
    original, written = PartialFeatures.write_part, []
    monkeypatch.setattr(PartialFeatures, "write_part",
                        lambda self, s, i, f, v: (written.append((s, i)), original(self, s, i, f, v)))
    return written


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # as a kill -9 mid-write might
    "empty": lambda p: p.write_bytes(b""),
    "not an npz": lambda p: p.write_bytes(b"garbage written over the part"),
    "other rows": lambda p: np.savez(p, features=np.ones((5, 512), np.float32), valid=np.ones(5, bool)),
    "other shape": lambda p: np.savez(p, features=np.ones((8, 256), np.float32), valid=np.ones(8, bool)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_part_is_discarded_and_computed_again_on_resume(damage, splits, backbone, feature_file, tmp_path,
                                                                 monkeypatch, capsys):
    out = tmp_path / "f.h5"
    assert interrupt_run(3, splits, backbone, out, monkeypatch) == [("train", 0), ("train", 1), ("train", 2)]
    part = out.parent / ".f.h5.partial" / "train-000001.npz"
    DAMAGE[damage](part)
    capsys.readouterr()
    written = record_writes(monkeypatch)
    run(splits, backbone, out, commit_rows=8)
    assert f"part {part}" in capsys.readouterr().out  # named, with why, as it is discarded
    assert ("train", 1) in written and ("train", 0) not in written and ("train", 2) not in written
    assert equals_feature_file(out, feature_file)


def test_part_lost_after_the_plan_is_computed_again_before_assembly(splits, backbone, feature_file, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "f.h5"
    original, written = PartialFeatures.write_part, []

    def write_part(self, split, index, features, valid):
        original(self, split, index, features, valid)
        written.append((split, index))
        if (split, index) == ("test", 0):  # train is done: one of its parts disappears
            (self.dir / "train-000001.npz").unlink()

    monkeypatch.setattr(PartialFeatures, "write_part", write_part)
    run(splits, backbone, out, commit_rows=8)
    assert "computing again 8 images whose parts went missing" in capsys.readouterr().out
    assert written.count(("train", 1)) == 2
    assert equals_feature_file(out, feature_file)


def flip_features_bytes(part):
    """Change bytes inside the features array of a part: its zip entry no longer matches its CRC-32."""
    raw = bytearray(part.read_bytes())
    at = raw.index(b"\x93NUMPY") + 1000  # past the array's header, inside its data
    raw[at : at + 16] = bytes(16)
    part.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["deleted", "bytes changed"])
def test_part_damaged_during_assembly_is_named_and_a_rerun_computes_it_again(damage, splits, backbone, feature_file,
                                                                              tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    original = PartialFeatures.assemble

    def assemble(self, spec, split_rows):
        part = self.dir / "train-000001.npz"
        part.unlink() if damage == "deleted" else flip_features_bytes(part)
        return original(self, spec, split_rows)

    with monkeypatch.context() as patch:
        patch.setattr(PartialFeatures, "assemble", assemble)
        with pytest.raises(FeatureStoreError, match=r"part \S+/train-000001.npz .*run the extract stage again, it "
                                                    r"computes that part again"):
            run(splits, backbone, out, commit_rows=8)
    assert not out.exists()
    written = record_writes(monkeypatch)
    run(splits, backbone, out, commit_rows=8)
    assert written == [("train", 1)]  # the others were kept
    assert equals_feature_file(out, feature_file)


# -- disk space -----------------------------------------------------------------------------
def test_assembly_without_disk_space_stops_before_writing_and_keeps_the_parts(splits, backbone, feature_file, tmp_path,
                                                                             monkeypatch):
    import collections
    import shutil

    out = tmp_path / "f.h5"
    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
        with pytest.raises(FeatureStoreError, match=rf"assembling {out} needs about 16\.\d MiB of disk, {tmp_path} has "
                                                    r"1\.0 MiB free: free some space and run the extract stage again"):
            run(splits, backbone, out, commit_rows=8)
    assert not out.exists() and shutil.disk_usage is real
    assert len(list((tmp_path / ".f.h5.partial").glob("*.npz"))) == 6  # 3 train, 1 val, 2 test parts
    written = record_writes(monkeypatch)
    run(splits, backbone, out, commit_rows=8)
    assert written == []  # nothing computed again
    assert equals_feature_file(out, feature_file)


# -- integrity of the file ------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["features", "labels"])
def test_bytes_changed_inside_the_data_fail_their_checksum(dataset, feature_file, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(feature_file.read_bytes())
    with h5py.File(bad) as h5:
        dset = h5["train"][dataset]
        offset = dset.id.get_chunk_info(0).byte_offset if dset.chunks else dset.id.get_offset()
        garbage = np.full(4, 2, dset.dtype).tobytes()  # plausible values: finite features, a valid label
    with open(bad, "r+b") as f:
        f.seek(offset + 8)
        f.write(garbage)
    with FeatureStore(bad) as store:
        store.load("test")  # other chunks read fine
        with pytest.raises(FeatureStoreError, match=rf"feature file {bad} is damaged: train rows 0\.\.18 do not match "
                                                    "their checksums.*delete it and run the extract stage again"):
            store.load("train")


def test_damaged_chunk_index_is_refused_not_read_as_zeros(feature_file, tmp_path):
    """Garbage over where the file records a chunk's address: HDF5 itself would read zeros there."""
    import struct

    raw = bytearray(feature_file.read_bytes())
    with h5py.File(feature_file) as h5:
        address = struct.pack("<Q", h5["val"]["features"].id.get_chunk_info(0).byte_offset)
    at = raw.index(address)
    raw[at : at + 8] = b"\x08\x91\x7f\x1c\x00\x35\x1a\x43"
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FeatureStoreError, match=rf"feature file {bad}: the index of val/features points outside the "
                                                "file .* delete it and run the extract stage again"):
        FeatureStore(bad)


@pytest.mark.parametrize("name, value", [
    ("classes", '["cat", "airplane", "ship"]'),  # reordered: every label would be renamed
    ("feature_dim", 256),
    ("weights_id", "ResNet18_Weights.IMAGENET1K_V1"),
])
def test_edited_attribute_is_refused_on_opening(name, value, feature_file, splits, tmp_path):
    from pipeline.core.config import parse_params
    from pipeline.stages import train

    edited = tmp_path / "edited.h5"
    edited.write_bytes(feature_file.read_bytes())
    with h5py.File(edited, "r+") as h5:
        h5.attrs[name] = value
    with pytest.raises(FeatureStoreError, match=rf"feature file {edited}: its attributes .* do not match the checksum "
                                                "written with them.*run the extract stage again"):
        FeatureStore(edited)
    splits.save(tmp_path / "splits.json")
    params = parse_params({"backbone": {"name": "resnet18", "weights": None, "input_size": 32}})
    with pytest.raises(FeatureStoreError, match="do not match the checksum"):
        train.run(params, edited, tmp_path / "splits.json", tmp_path / "head.npz")
    assert not (tmp_path / "head.npz").exists()


@pytest.mark.parametrize("dataset, data", [
    ("features", np.ones((18, 256), np.float32)),  # rows of another shape than feature_shape
    ("labels", np.zeros(17, np.int64)),  # fewer labels than rows
])
def test_datasets_that_disagree_with_the_attributes_are_refused_on_opening(dataset, data, feature_file, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(feature_file.read_bytes())
    with h5py.File(bad, "r+") as h5:
        del h5["train"][dataset]
        h5["train"].create_dataset(dataset, data=data)
    with pytest.raises(FeatureStoreError, match=rf"feature file {bad}: train holds features of shape .*, where the attributes "
                                                r"say rows of \(512,\) float32.*run the extract stage again"):
        FeatureStore(bad)


@pytest.mark.parametrize("signature", [b"TREE", b"SNOD", b"HEAP"])
def test_damaged_metadata_is_a_clear_error(signature, feature_file, tmp_path):
    """Garbage over the file's own structures (B-tree, symbol table, heap of the group names)."""
    raw = bytearray(feature_file.read_bytes())
    at = raw.index(signature)
    raw[at : at + 32] = np.random.default_rng(0).integers(0, 256, 32, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FeatureStoreError, match=rf"feature file {bad} is truncated, corrupt or of another format "
                                                r"\(.*\); delete it and run the extract stage again"):
        with FeatureStore(bad) as store:
            for split in store.splits:
                store.load(split), store.ids(split)


# -- skipping unreadable images has a floor -------------------------------------------------
@pytest.mark.parametrize("unreadable, left", [
    ("train/cat/", "no training image of class 'cat'"),
    ("test/", "no test image"),
])
def test_skipping_that_leaves_a_class_or_split_without_images_stops(unreadable, left, cifar_folder, backbone,
                                                                     tmp_path, monkeypatch):
    import shutil

    from pipeline.core.errors import DatasetError

    root = tmp_path / "images"
    shutil.copytree(cifar_folder, root)
    bad = sorted(p for p in root.rglob("*.jpg") if p.relative_to(root).as_posix().startswith(unreadable))
    for p in bad:
        p.write_bytes(b"not a jpeg")
    splits = make_splits(open_source(root), 0.25, None, seed=0)
    out = tmp_path / "f.h5"
    with pytest.raises(DatasetError, match=rf"leaves {left}; the {len(bad)} unreadable images: \['{unreadable}"):
        run(splits, backbone, out, commit_rows=8, skip_bad=True)
    assert not out.exists()
    # the parts holding the unreadable images are discarded, the others kept
    holding = {(name, i // 8) for name, s in splits.splits.items() for i, k in enumerate(s.keys) if k.startswith(unreadable)}
    kept = {(p.stem.rsplit("-", 1)[0], int(p.stem.rsplit("-", 1)[1])) for p in (tmp_path / ".f.h5.partial").glob("*.npz")}
    assert kept and not kept & holding
    for p in bad:  # the images are fixed: a re-run reads only them again
        p.write_bytes((cifar_folder / p.relative_to(root)).read_bytes())
    written = record_writes(monkeypatch)
    out = run(splits, backbone, out, commit_rows=8, skip_bad=True)
    assert set(written) == holding
    with FeatureStore(out) as store:
        assert all(len(store._h5[s]["skipped"]) == 0 for s in store.splits)
