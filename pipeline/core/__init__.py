"""What every package uses: the typed configuration (``config``, validated with the head registry and the
params of every head kind, ``head_registry`` and ``head_params``), the errors users see (``errors``), file
helpers (``fileutil``), every path the pipeline writes (``layout``), the device and CPU features
(``device``), the carving of the splits applied on both sides (``splitting``) and what the stages' command
lines share (``cli``). It imports no other package of the pipeline.

One folder, so that every DVC stage lists it as one code dependency (``python -m tests.dvc_deps``): a change
to it re-runs every stage, as it may change what any of them does.
"""
