"""hellodd: dataset distillation with light labels (HeLlO, arXiv 2408.08201).

Stages, one module each: ``data`` -> ``teachers`` -> ``projector`` -> ``distill`` -> ``evaluate``,
with ``storage`` counting the bytes every label source costs.  ``cli`` only parses and dispatches.
"""

__version__ = "0.1.0"
