"""IOVPR: SFRS trained with ADE20k window layouts, and gray-layout inference.

Modules: ``ade20k`` (reads ADEChallengeData2016), ``layouts`` (window masks, the 10/20/30 %
sets, real and gray composites, the training transform), ``segmentation`` (the 2-class
window segmenter: models, training, cached inference), ``train`` (``harness train iovpr``),
``registered`` (the ``iovpr-real`` and ``iovpr-gray`` methods) and ``cli``.
Importing this package does not import torch.
"""
