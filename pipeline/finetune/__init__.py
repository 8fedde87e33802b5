"""The fine-tuned top: the backbone's layers above a cut, retrained with a new classifier on the cut cache
(:mod:`pipeline.finetune.head`, the head kind ``finetune``). Unlike the heads of :mod:`pipeline.heads`, it
runs part of the backbone (its top) and so imports :mod:`pipeline.backbone`; the pooled heads never do.
"""
