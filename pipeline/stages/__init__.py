"""The DVC stages, one thin module each: ``python -m pipeline.stages.<stage> [--config KEY]``.

Each module has a ``run`` function that takes the validated params and explicit paths (tests call
it directly) and a ``main`` that reads params.yaml and takes its paths from :mod:`pipeline.core.layout`,
the same paths dvc.yaml lists. Data side: prepare, extract. Head side: train, evaluate (they read
only the feature store). Then compare.
"""
