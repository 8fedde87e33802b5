"""Transfer learning with the backbone f and the head g split: f runs once, g trains on cached f(x).

The packages follow the split, each importing only those before it: ``data`` (images and splits) and
``store`` (the HDF5 feature cache, the one thing both sides share), ``backbone`` (f), ``heads`` (g),
``analyses`` (curves, seeds, LogME, leakage, on cached features), ``reports`` (what a user reads), and
``stages`` (one module per DVC stage). The head side (``heads``, ``analyses``) never imports ``data`` or
``backbone``, except the fine-tuned head, which trains the backbone's top layers. At the top level: what
every package uses (``config``, ``errors``, ``fileutil``, ``layout``, ``device``, and ``splitting``, the
carving rule applied on both sides), and the entry points above all packages: ``__main__`` (the CLI) and
``model`` (predict and export, f and g together).
"""

__version__ = "0.1.0"
