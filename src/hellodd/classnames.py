"""Readable class names for prompts: ImageNet WordNet IDs, RDED-style numeric folders, anything else.

``classlists/imagenet.tsv`` ships the 1000 ImageNet-1K WordNet IDs in label order (sorted IDs) with CLIP's
curated names, the names CLIP's zero-shot classifier was tuned with.  A mismatch here silently wrecks the
projector's zero-shot start, so folder names are mapped, never guessed, when they are WordNet IDs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

WNID = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def imagenet_table() -> dict[str, str]:
    text = (resources.files("hellodd") / "classlists" / "imagenet.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return {wnid: name for wnid, name in rows}


def imagenet_classes() -> list[str]:
    return list(imagenet_table().values())


def clean(folder: str) -> str:
    """``/b/bakery/shop`` or ``bakery_shop`` -> ``bakery shop``."""
    parts = [p for p in re.split(r"[/\\]", folder) if p and not (len(p) == 1 and p.isalpha())]
    return " ".join(" ".join(parts).replace("_", " ").replace("-", " ").split())


def readable_names(folders: list[str]) -> list[str]:
    """Names for prompts, in the folders' (label) order."""
    table = imagenet_table()
    if folders and all(WNID.fullmatch(f) for f in folders):
        unknown = [f for f in folders if f not in table]
        if not unknown:
            return [table[f] for f in folders]
    if len(folders) == len(table) and all(f.isdigit() for f in folders):  # RDED's 00000..00999 layout
        return list(table.values())
    return [clean(f) for f in folders]
