"""hellodd: dataset distillation with light labels (HeLlO, arXiv 2408.08201).

Stages, one module each: ``data`` -> ``teachers`` -> ``projector`` -> ``distill`` -> ``evaluate``,
with ``storage`` counting the bytes every label source costs.  ``cli`` only parses and dispatches.
``sets`` owns a distilled set's format, ``export`` packs one, and :func:`load` (``lightset``) opens the
package anywhere: the public API.
"""

__version__ = "0.1.0"


def load(path, base_checkpoint=None):
    """Open a set written by ``hellodd export`` (folder or .tar): see :mod:`hellodd.lightset`."""
    from hellodd.lightset import load as _load

    return _load(path, base_checkpoint)
