"""Analyses on the head side, from the feature store alone: learning curves (``curves``, and
``finetune_curve`` for the fine-tuned head), refits over seeds (``seeds``), LogME and rank agreement
(``transferability``), and near-copies between splits (``leakage``). They build heads through
:mod:`pipeline.heads`; none reads an image or runs the backbone."""
