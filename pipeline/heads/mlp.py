"""A one-hidden-layer perceptron on the features, trained for epochs with AdamW."""

from __future__ import annotations

import numpy as np

from pipeline.core.device import torch_device
from pipeline.core.head_params import MlpParams
from pipeline.heads.base import EpochLog, PooledHead
from pipeline.heads.epochs import run_epochs
from pipeline.heads.metrics import top1


class MlpHead(PooledHead):
    """One hidden layer (ReLU, dropout), AdamW with a cosine schedule, seeded shuffling and init."""

    kind = "mlp"
    Params = MlpParams
    logs_epochs = True

    def _module(self, dim: int):
        import torch

        p = self.params
        return torch.nn.Sequential(
            torch.nn.Linear(dim, p.hidden), torch.nn.ReLU(), torch.nn.Dropout(p.dropout), torch.nn.Linear(p.hidden, self.n_classes)
        )

    def _fit(self, X: np.ndarray, y: np.ndarray, log: EpochLog | None = None) -> None:
        import torch
        import torch.nn.functional as F

        p = self.params
        device = torch_device()
        features, labels = torch.as_tensor(X), torch.as_tensor(y)
        # init, shuffling and dropout are seeded; the caller's RNG state is left as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            net = self._module(X.shape[1]).to(device)
            opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
            steps = p.epochs * -(-len(y) // p.batch_size)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

            def batches(epoch: int):
                order = torch.randperm(len(y))
                for start in range(0, len(y), p.batch_size):
                    idx = order[start : start + p.batch_size]
                    yield features[idx].to(device), labels[idx].to(device)

            def end_epoch(epoch: int, loss: float, seconds: float) -> None:
                if log is not None:
                    log.log.step({"train/loss": loss, **self._monitor_top1(net, device, log)})

            run_epochs(net, opt, schedule, p.epochs, batches, lambda net, x, y: F.cross_entropy(net(x), y),
                       end_epoch=end_epoch)
        self.net_state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}

    @staticmethod
    def _monitor_top1(net, device, log: EpochLog) -> dict[str, float]:
        """Top-1 on the monitored (validation) features, in eval mode: no dropout, no random numbers."""
        import torch

        if log.X is None:
            return {}
        net.eval()
        with torch.inference_mode():
            scores = torch.cat([net(torch.as_tensor(log.X[s : s + 4096]).to(device)).cpu()
                                for s in range(0, len(log.y), 4096)])
        return {"val/top1": top1(scores.numpy(), log.y)}

    def _scores_module(self):
        import torch

        net = self._module(self.net_state["0.weight"].shape[1])
        net.load_state_dict({k: torch.as_tensor(v) for k, v in self.net_state.items()})
        return net.eval()

    def _scores(self, X: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._scores_module()(torch.as_tensor(X)).numpy()

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return self.net_state

    def _load_model_arrays(self, state: dict[str, np.ndarray]) -> None:
        self.net_state = dict(state)
