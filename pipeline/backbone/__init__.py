"""The frozen backbone f: the registry of pretrained models (``backbones``: build, weights, the cut, the
top above the cut) and the one pass that runs f over every image and writes the feature store
(``extract``). It reads images through :mod:`pipeline.data` and writes through :mod:`pipeline.store`.
The one head that imports it is the fine-tuned head (:mod:`pipeline.finetune.head`), for the backbone's
top layers above the cut."""
