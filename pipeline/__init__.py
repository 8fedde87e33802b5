"""Transfer learning with the backbone f and the head g split: f runs once, g trains on cached f(x).

The packages follow the split, each importing only those before it: ``core`` (what every package uses: the
typed configuration and the head registry, errors, paths, files, the device), ``data`` (images and splits)
and ``store`` (the HDF5 feature cache, the one thing both sides share), ``backbone`` (f), ``heads`` (g),
``finetune`` (the backbone's top retrained on the cut cache, the one head that runs part of f), ``analyses``
(curves, seeds, LogME, leakage, on cached features), ``reports`` (what a user reads), and ``stages`` (one
module per DVC stage). The head side (``heads``, ``analyses``) never imports ``data`` or ``backbone``, except
through ``finetune`` (the fine-tuned top and its learning curve). At the top level, the entry points above
all packages: ``__main__`` (the CLI) and ``model`` (predict and export, f and g together).
"""

__version__ = "0.1.0"
