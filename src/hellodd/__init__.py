"""hellodd: dataset distillation with light labels (HeLlO, arXiv 2408.08201).

Stages, one module each: ``teachers`` -> ``projector.transfer`` -> ``distill`` -> ``evaluate``, with
``storage`` counting the bytes every label source costs; ``pipeline`` runs them in order and ``cli`` only
parses and dispatches.  ``layout`` names every file of a run folder, ``sets`` owns a distilled set's format,
``export`` packs one, and :func:`load` (``lightset``) opens the package anywhere: the public API.
"""

from hellodd.version import __version__


def load(path, base_checkpoint=None):
    """Open a set written by ``hellodd export`` (folder or .tar): see :mod:`hellodd.lightset`."""
    # imported when called: ``import hellodd`` stays free of torch (a quarter of a second or more)
    from hellodd.lightset import load as _load

    return _load(path, base_checkpoint)


__all__ = ["__version__", "load"]
