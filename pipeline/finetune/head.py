"""The fine-tuned head: the backbone's layers above a cut, plus a new classifier, trained on the cut cache.

The classic "retrain the last layers" with the f/g split moved down: f is the backbone below the
cut (frozen, run once by extract, its activations cached as (N, C, H, W)); g is the backbone
above the cut, initialised from the pretrained weights, followed by a new linear classifier. g
trains on the cached activations epoch after epoch: AdamW with separate learning rates for the
pretrained layers and the classifier, linear warm-up then cosine decay, weight decay on weights
only, label smoothing, random horizontal flips of the cached maps; depthwise kernels kept frozen by
default (``depthwise``); dense layers in bfloat16 where the hardware has it (``precision``); seeded;
on the GPU when there is one. Scores average the map and its mirror image (``tta_flip``). The top is
the traced eval-mode graph (see ``TracedNetwork``): its batch norm and dropout layers train,
EfficientNet's drop-connect (a Python-level branch) is not applied.

Before training, g(activations) equals the frozen network's pooled features: the top is the same
graph with the same weights (see ``FeatureExtractor.cut_at``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pipeline.core.device import compile_if_possible, resolve_precision, torch_device
from pipeline.core.errors import PipelineError
from pipeline.core.head_params import FinetuneParams
from pipeline.heads.base import FitRecord, Head
from pipeline.heads.epochs import run_epochs

BUFFER_BYTES = 256 << 20
"""Training rows gathered and shuffled at a time (in the cache's dtype)."""

if TYPE_CHECKING:
    from torch import nn

    from pipeline.heads.live import TrainingLog
    from pipeline.store.features import FeatureStore


def finetuned_module(top: nn.Module, feature_dim: int, n_classes: int, tta_flip: bool) -> nn.Module:
    """top -> new linear classifier, as one module mapping activations (B, C, H, W) to scores."""
    import torch
    from torch import nn

    class FinetunedTop(nn.Module):
        def __init__(self):
            super().__init__()
            self.top = top
            self.classifier = nn.Linear(feature_dim, n_classes)
            self.tta_flip = tta_flip

        def forward(self, activations: torch.Tensor) -> torch.Tensor:
            x = activations.float().contiguous(memory_format=torch.channels_last)
            scores = self.classifier(self.top(x).flatten(1))
            if self.tta_flip and not self.training:
                scores = (scores + self.classifier(self.top(x.flip(3)).flatten(1))) / 2
            return scores

    return FinetunedTop()


def depthwise_kernels(top: nn.Module) -> list[nn.Parameter]:
    """The kernels of ``top``'s depthwise convolutions: the 4-d parameters with one input channel per
    output channel, (C, 1, kH, kW)."""
    return [q for q in top.parameters() if q.ndim == 4 and q.shape[1] == 1 and q.shape[0] > 1]


class FinetuneHead(Head):
    """The backbone's layers above the cut and a new classifier, trained on cached cut activations."""

    kind = "finetune"
    Params = FinetuneParams
    params: FinetuneParams
    logs_epochs = True

    def __init__(self, params: FinetuneParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        self.state: dict[str, np.ndarray] = {}
        self._net = None

    def fit_store(self, store: FeatureStore, log: TrainingLog | None = None) -> FinetuneHead:
        """Train on the ``train`` split of a cut cache (in memory when it fits, else read in
        shuffled buffers)."""
        import torch

        store.require_input(self.input)
        n = store.n_rows("train")
        if n == 0:
            raise PipelineError(f"{store.path} has no training images")
        self.n_classes = len(store.spec.classes)
        self.fitted, self.temperature = FitRecord(backbone=store.spec.backbone_recipe()), None
        read, streamed = self._reader(store)
        if streamed:
            self.fitted.streamed = True
        device = torch_device()
        self.fitted.precision = resolve_precision(self.params.precision, device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            generator = torch.Generator().manual_seed(self.seed)
            net, opt, schedule = self._build(n, device)
            compiled = compile_if_possible(self.params.compile, device, "finetune")
            trained = torch.compile(net) if compiled else net  # shares net's parameters
            slice_rows = store.chunk_rows("train")
            buffer_rows = max(1, BUFFER_BYTES // (store.spec.feature_dim * np.dtype(store.spec.storage_dtype).itemsize))

            def batches(epoch: int):
                from tqdm import tqdm

                with tqdm(total=n, unit="img", desc=f"finetune epoch {epoch + 1}/{self.params.epochs}", leave=False) as bar:
                    for x, labels in self._on_device(self._batches(read, n, slice_rows, buffer_rows, generator), device):
                        yield x, labels
                        bar.update(len(x))

            def end_epoch(epoch: int, loss: float, seconds: float) -> None:
                print(f"finetune epoch {epoch + 1}/{self.params.epochs}: train loss {loss:.4f}, "
                      f"{seconds:.1f} s ({n / seconds:.0f} images/s)", flush=True)
                if log is not None:
                    log.step({"train/loss": loss, **self._val_top1(net, store, device)})

            losses, seconds = run_epochs(trained, opt, schedule, self.params.epochs, batches,
                                         self._loss(generator, device), self._train_mode, end_epoch)
        self.fitted.train_loss, self.fitted.epoch_seconds = losses, seconds
        self._net = net.cpu().eval()
        self.state = {k: v.detach().numpy() for k, v in self._net.state_dict().items()}
        return self

    def _val_top1(self, net, store: FeatureStore, device) -> dict[str, float]:
        """Top-1 on the validation split of the cut cache, scored as at prediction (eval mode, with the
        flip average): no random numbers drawn, no batch-norm statistics updated."""
        import torch

        if "val" not in store.splits or store.n_rows("val") == 0:
            return {}
        net.eval()
        correct, total = 0, 0
        with torch.inference_mode():
            for X, y in store.iter_blocks("val", dtype=store.spec.storage_dtype):
                for s in range(0, len(y), 256):
                    scores = net(torch.as_tensor(X[s : s + 256]).to(device))
                    correct += int((scores.argmax(dim=1).cpu().numpy() == y[s : s + 256]).sum())
                total += len(y)
        return {"val/top1": correct / total}

    @staticmethod
    def _reader(store: FeatureStore) -> tuple[Callable[[int, int], tuple[np.ndarray, np.ndarray]], bool]:
        """``read(start, stop) -> (X, y)`` of training rows, in the cache's dtype; from memory when the
        split fits, else from the file. Also whether it streams."""
        from pipeline.store.features import fits_in_memory

        dtype = store.spec.storage_dtype
        if fits_in_memory(store.n_rows("train") * store.spec.feature_dim * np.dtype(dtype).itemsize):
            X_all, y_all = store.load("train", dtype=dtype)
            return (lambda start, stop: (X_all[start:stop], y_all[start:stop])), False
        return (lambda start, stop: store.read("train", start, stop, dtype=dtype)), True

    def _build(self, n: int, device) -> tuple[Any, Any, Any]:
        """The network (pretrained top + zero classifier), AdamW with its parameter groups, and the
        learning-rate schedule (linear warm-up, then cosine or constant)."""
        import torch

        from pipeline.backbone.backbones import top_above_cut

        p = self.params
        top, feature_dim = top_above_cut(self.fitted.backbone, training=True, precision=self.fitted.precision)
        top.requires_grad_(True)
        if p.depthwise == "frozen":
            for kernel in depthwise_kernels(top):
                kernel.requires_grad_(False)
        net = finetuned_module(top, feature_dim, self.n_classes, p.tta_flip)
        torch.nn.init.zeros_(net.classifier.weight)
        torch.nn.init.zeros_(net.classifier.bias)
        net = net.to(device).to(memory_format=torch.channels_last)
        decay = [q for q in top.parameters() if q.ndim > 1 and q.requires_grad]
        no_decay = [q for q in top.parameters() if q.ndim <= 1 and q.requires_grad]
        opt = torch.optim.AdamW([
            {"params": decay, "lr": p.lr_top, "weight_decay": p.weight_decay},
            {"params": no_decay, "lr": p.lr_top, "weight_decay": 0.0},
            {"params": [net.classifier.weight], "lr": p.lr_classifier, "weight_decay": p.weight_decay},
            {"params": [net.classifier.bias], "lr": p.lr_classifier, "weight_decay": 0.0},
        ])
        steps_per_epoch = math.ceil(n / p.batch_size)
        total_steps, warmup_steps = p.epochs * steps_per_epoch, round(p.warmup_epochs * steps_per_epoch)

        def lr_factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            if p.schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

        return net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    @staticmethod
    def _on_device(batches, device):
        """Batches of (maps, labels) arrays as float32 and int64 tensors on ``device``."""
        import torch

        for X, labels in batches:
            yield torch.as_tensor(X).to(device, non_blocking=True).float(), torch.as_tensor(labels).to(device)

    def _train_mode(self, net) -> None:
        """Train mode; batch norm layers keep ImageNet's statistics with ``batchnorm: frozen``."""
        import torch

        net.train()
        if self.params.batchnorm == "frozen":
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _loss(self, generator, device):
        """The training loss of a batch: maps mirrored left-right at random (``flip``), label smoothing."""
        import torch
        import torch.nn.functional as F

        p = self.params

        def loss(net, x, labels):
            if p.flip:
                mirror = (torch.rand(len(x), generator=generator) < 0.5).to(device)
                x = torch.where(mirror[:, None, None, None], x.flip(3), x)
            return F.cross_entropy(net(x), labels, label_smoothing=p.label_smoothing)

        return loss

    @property
    def chosen(self) -> dict:
        seconds = self.fitted.epoch_seconds or [float("nan")]
        return {"cut": (self.fitted.backbone or {}).get("cut"), "precision": self.fitted.precision,
                "seconds_per_epoch": round(float(np.mean(seconds)), 1)}

    def _batches(self, read, n: int, slice_rows: int, buffer_rows: int, generator):
        """Shuffled training batches from ``read(start, stop) -> (X, y)``: slices of ``slice_rows``
        consecutive rows (whole HDF5 chunks) in random order, gathered ``buffer_rows`` at a time and
        shuffled within the buffer. Rows of a split are stored class by class, so a buffer mixes many
        slices; the order depends only on the seed and the file, not on where the rows are read from."""
        import torch

        bs = self.params.batch_size
        slices = torch.randperm(math.ceil(n / slice_rows), generator=generator).tolist()
        per_buffer = max(1, buffer_rows // slice_rows)
        carry: list[tuple[np.ndarray, np.ndarray]] = []
        for first in range(0, len(slices), per_buffer):
            parts = carry + [read(k * slice_rows, min(n, (k + 1) * slice_rows)) for k in slices[first : first + per_buffer]]
            X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            order = torch.randperm(len(y), generator=generator).numpy()
            full = len(y) - len(y) % bs
            for start in range(0, full, bs):
                yield X[order[start : start + bs]], y[order[start : start + bs]]
            carry = [(X[order[full:]], y[order[full:]])] if full < len(y) else []
        if carry:
            yield carry[0]

    def module(self) -> nn.Module:
        """The trained top + classifier as one module, activations (B, C, H, W) -> scores, in eval mode."""
        import torch

        if self._net is None:
            if not self.state:
                raise RuntimeError("FinetuneHead is not fitted")
            from pipeline.backbone.backbones import top_above_cut

            top, _ = top_above_cut(self.fitted.backbone, pretrained=False)
            shape = self.state["classifier.weight"].shape
            net = finetuned_module(top, shape[1], shape[0], self.params.tta_flip)
            net.load_state_dict({k: torch.as_tensor(v) for k, v in self.state.items()})
            self._net = net.to(memory_format=torch.channels_last).eval().requires_grad_(False)
        return self._net

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        import torch

        device = torch_device()
        net = self.module().to(device)
        with torch.inference_mode():
            scores = [net(torch.as_tensor(X[s : s + 256]).to(device)).cpu().numpy() for s in range(0, len(X), 256)]
        return np.concatenate(scores or [np.zeros((0, self.n_classes), np.float32)])

    def _torch_module(self) -> nn.Module:
        return self.module()

    def _arrays(self) -> dict[str, np.ndarray]:
        return self.state

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.state, self._net = dict(arrays), None
