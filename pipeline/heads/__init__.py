"""The head g: classifiers trained on what the frozen backbone cached, never on images.

Each kind is registered, with its params, in :data:`pipeline.core.head_registry.KINDS`; build one with
:func:`~pipeline.core.head_registry.build_head`. The fine-tuned top of the backbone, which also runs the
backbone's last layers, is its own package, :mod:`pipeline.finetune`.

One interface (:class:`~pipeline.heads.base.Head`): ``fit_store(store)`` trains from the feature
store, ``decision_function`` scores features, ``save`` / :func:`~pipeline.heads.base.load_head`
persist, ``to_torch`` exports; :func:`~pipeline.heads.base.fit_and_score` is what train, seeds and the
probe do with a head.

Modules: ``base`` (interface, normalisation, file format), ``calibration`` (temperature scaling),
``linear`` (logistic, linear, ridge, nearest_centroid), ``knn``, ``mlp``, ``epochs`` (the epoch loop),
``shots`` (many small fits, for the learning curve), ``live`` (training curves written with DVCLive).
"""
