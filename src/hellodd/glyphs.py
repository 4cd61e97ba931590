"""Glyphs: a many-class recognition set rendered from real CJK typefaces (Debian's font packages).

Classes are the ``N`` most common Han characters that every chosen face covers, ranked by Unihan's
``kGradeLevel`` (school grade), then ``kFrequency``, then code point (Debian's ``unicode-data``).  The split
is **by typeface**: the validation faces are designs that never appear in training (a marker pen, a pencil
textbook hand, a rounded gothic, a Kai of another foundry, a brush face), so accuracy measures reading a
new typeface, as ImageNet's validation measures new photographs.

Every image is one seeded rendering of one character in one face: scale, aspect, position, rotation,
stroke weight, a neighbouring character's fragment at an edge (clutter), occluding bars, blur, contrast
and noise, drawn at twice the size and reduced to ``image_size`` (grey, ink light on dark).  The rendering
is a pure function of (version, face, character, split, index, seed): two processes render the same
bytes with the same PIL/FreeType and fonts.  A rendered set is cached (``~/.cache/hellodd/glyphs``, or
``$HELLODD_CACHE``) under a digest of everything it depends on: the font files' and the ranking file's
sha256, the settings and :data:`VERSION`; a file with another digest is never reused.

``make glyphs`` installs the font packages (:data:`FONT_PACKAGES`) and ``unicode-data``.
"""

from __future__ import annotations

import bz2
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from hellodd.errors import UserError

VERSION = "glyphs-v1"  # bump when the rendering changes: cached sets of another version are not reused
UNIHAN_DEBIAN = "/usr/share/unicode/Unihan_DictionaryLikeData.txt.bz2"
FONTS_DEBIAN = "/usr/share/fonts"


@dataclass(frozen=True)
class Face:
    package: str  # the Debian package that installs it
    file: str  # path under the fonts folder
    index: int  # face index in a collection (.ttc)
    design: str  # what a typographer would call it


# training faces: Ming/Song/Mincho, Hei/Gothic, Kai, antique and handwritten designs from many foundries
TRAIN_FACES = (
    Face("fonts-arphic-uming", "truetype/arphic/uming.ttc", 0, "Ming (AR PL UMing CN)"),
    Face("fonts-arphic-ukai", "truetype/arphic/ukai.ttc", 0, "Kai (AR PL UKai CN)"),
    Face("fonts-wqy-zenhei", "truetype/wqy/wqy-zenhei.ttc", 0, "Hei (WenQuanYi Zen Hei)"),
    Face("fonts-wqy-microhei", "truetype/wqy/wqy-microhei.ttc", 0, "sans (WenQuanYi Micro Hei)"),
    Face("fonts-ipafont-gothic", "opentype/ipafont-gothic/ipag.ttf", 0, "Gothic (IPAGothic)"),
    Face("fonts-ipafont-mincho", "opentype/ipafont-mincho/ipam.ttf", 0, "Mincho (IPAMincho)"),
    Face("fonts-hanazono", "truetype/hanazono/HanaMinA.ttf", 0, "Mincho (Hanazono)"),
    Face("fonts-horai-umefont", "truetype/horai-umefont/ume-tgo4.ttf", 0, "Gothic (Ume Gothic)"),
    Face("fonts-horai-umefont", "truetype/horai-umefont/ume-tmo3.ttf", 0, "Mincho (Ume Mincho)"),
    Face("fonts-migmix", "truetype/migmix/migu-1p-regular.ttf", 0, "Gothic (Migu 1P)"),
    Face("fonts-migmix", "truetype/migmix/migmix-1p-bold.ttf", 0, "bold Gothic (MigMix 1P Bold)"),
    Face("fonts-motoya-l-cedar", "truetype/motoya-l-cedar/MTLc3m.ttf", 0, "Gothic (Motoya L Cedar)"),
    Face("fonts-vlgothic", "truetype/vlgothic/VL-Gothic-Regular.ttf", 0, "Gothic (VL Gothic)"),
    Face("fonts-cns11643-sung", "truetype/cns11643/TW-Sung-98_1.ttf", 0, "Sung (TW-Sung)"),
    Face("fonts-cns11643-kai", "truetype/cns11643/TW-Kai-98_1.ttf", 0, "Kai (TW-Kai)"),
    Face(
        "fonts-dejima-mincho", "truetype/dejima-mincho/dejima-mincho-r227.ttf", 0, "antique Mincho (Dejima)"
    ),
    Face("fonts-konatu", "truetype/konatu/Konatu.ttf", 0, "Gothic (Konatu)"),
    Face("fonts-kiloji", "truetype/kiloji/kiloji.ttf", 0, "longhand (kiloji)"),
    Face("fonts-seto", "truetype/seto/setofont.ttf", 0, "handwriting (SetoFont)"),
    Face("fonts-yozvox-yozfont", "truetype/yozvox-yozfont/YOzRN_.ttf", 0, "handwriting (YOzN)"),
)
# validation faces: designs of other foundries and other tools, never seen in training
VAL_FACES = (
    Face("fonts-lxgw-wenkai", "truetype/lxgw-wenkai/LXGWWenKai-Regular.ttf", 0, "Kai (LXGW WenKai)"),
    Face("fonts-klee", "truetype/klee/KleeOne-Regular.ttf", 0, "pencil textbook hand (Klee One)"),
    Face("fonts-yusei-magic", "truetype/yusei-magic/YuseiMagic-Regular.ttf", 0, "marker pen (Yusei Magic)"),
    Face(
        "fonts-motoya-l-maruberi", "truetype/motoya-l-maruberi/MTLmr3m.ttf", 0, "rounded Gothic (Motoya Maru)"
    ),
    Face("fonts-aoyagi-kouzan-t", "truetype/aoyagi-kouzan-t/AoyagiKouzanT.ttf", 0, "brush (Aoyagi Kouzan)"),
    Face("fonts-ipaexfont-gothic", "opentype/ipaexfont-gothic/ipaexg.ttf", 0, "Gothic (IPAexGothic)"),
)
FONT_PACKAGES = tuple(sorted({f.package for f in TRAIN_FACES + VAL_FACES} | {"unicode-data"}))
INSTALL_HINT = "make glyphs (apt-get install " + " ".join(FONT_PACKAGES) + ")"


def cache_root() -> Path:
    return Path(os.environ.get("HELLODD_CACHE") or Path.home() / ".cache" / "hellodd") / "glyphs"


def face_paths(root: str | os.PathLike) -> list[Path]:
    """Every face's file under ``root``, or the one line that names the first one missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"--data {root}: folder not found (the glyphs data reads fonts from it; {INSTALL_HINT})"
        )
    paths = []
    for face in TRAIN_FACES + VAL_FACES:
        p = root / face.file
        if not p.is_file():
            raise UserError(f"--data {root}: no {face.file} (Debian package {face.package}; {INSTALL_HINT})")
        paths.append(p)
    return paths


def ranking(unihan: str | os.PathLike) -> list[int]:
    """Han code points (U+4E00-9FFF) with a Unihan grade level or frequency, most common first."""
    path = Path(unihan)
    if not path.is_file():
        raise UserError(f"--set data.glyph_unihan={path}: file not found ({INSTALL_HINT})")
    freq, grade = {}, {}
    try:
        opener = bz2.open if path.suffix == ".bz2" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.startswith("#") or line.count("\t") != 2:
                    continue
                cp, field, value = line.rstrip("\n").split("\t")
                if field in ("kFrequency", "kGradeLevel") and cp.startswith("U+"):
                    (freq if field == "kFrequency" else grade)[int(cp[2:], 16)] = int(value)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"--set data.glyph_unihan={path}: not a readable Unihan file ({e})") from None
    chars = [c for c in set(freq) | set(grade) if 0x4E00 <= c <= 0x9FFF]
    if not chars:
        raise UserError(f"--set data.glyph_unihan={path}: no kGradeLevel or kFrequency fields")
    return sorted(chars, key=lambda c: (grade.get(c, 99), freq.get(c, 99), c))


@lru_cache(maxsize=64)
def _cmap(path: str, index: int) -> frozenset:
    from fontTools.ttLib import TTFont  # lazy: only the glyphs data reads font tables

    try:
        font = TTFont(path, fontNumber=index, lazy=True)
        return frozenset(font.getBestCmap() or {})
    except Exception as e:  # fontTools raises many kinds on a damaged file; any of them means unusable
        raise UserError(f"{path}: not a readable font ({str(e).splitlines()[0][:100]})") from None


def choose_classes(root, unihan, n: int, first: int = 0) -> list[int]:
    """The ``n`` most common characters every face covers after the ``first`` most common (ranks ``first + 1``
    to ``first + n``), or the one line that says how many there are."""
    covered = None
    for face, path in zip(TRAIN_FACES + VAL_FACES, face_paths(root)):
        cmap = _cmap(str(path), face.index)
        covered = cmap if covered is None else covered & cmap
    chars = [c for c in ranking(unihan) if c in covered]
    if len(chars) < first + n:
        raise UserError(
            f"--set data.glyph_classes={n}: only {len(chars)} ranked characters are in every face"
            + (f", {len(chars) - first} after data.glyph_first={first}" if first else "")
        )
    return chars[first : first + n]


def chosen(cfg) -> list[int]:
    """The data config's characters (code points), in label order."""
    return choose_classes(cfg.root, cfg.glyph_unihan, cfg.glyph_classes, cfg.glyph_first)


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Jitter:
    """The ranges of one rendering's random settings (the dataset's difficulty)."""

    scale: tuple[float, float] = (0.55, 0.95)  # glyph em as a fraction of the image side
    aspect: tuple[float, float] = (0.8, 1.2)  # horizontal stretch
    shift: float = 0.14  # centre offset, fraction of the side
    rotate: float = 14.0  # degrees, either way
    stroke: tuple[int, ...] = (-1, 0, 0, 1, 2)  # -1 thins (erosion), n > 0 thickens by n px (at 2x size)
    clutter: float = 0.5  # probability of a neighbouring character's fragment at one edge
    occlude: float = 0.35  # probability of one to two bars of background across the glyph
    blur: tuple[float, float] = (0.0, 1.1)  # Gaussian sigma at the final size
    noise: tuple[float, float] = (0.02, 0.10)  # pixel noise sigma, [0, 1] scale
    ink: tuple[float, float] = (0.55, 1.0)  # ink level; the background is drawn from (0, 0.35)


JITTER = Jitter()


@lru_cache(maxsize=4096)
def _font(path: str, index: int, size: int):
    from PIL import ImageFont  # lazy with the rendering

    return ImageFont.truetype(path, size, index=index)


def render_glyph(
    path: str, index: int, char: int, other: int, size: int, rng: np.random.Generator, jitter: Jitter = JITTER
) -> np.ndarray:
    """One seeded rendering of ``char`` in a face: uint8 ``[size, size]``.  ``other`` is the character whose
    fragment may clutter an edge."""
    from PIL import Image, ImageDraw, ImageFilter  # lazy: only the glyphs data renders

    big = 2 * size
    em = int(round(big * rng.uniform(*jitter.scale)))
    stroke = int(rng.choice(jitter.stroke))
    layer = Image.new("L", (2 * big, 2 * big), 0)
    draw = ImageDraw.Draw(layer)
    font = _font(path, index, em)
    draw.text(
        (big, big), chr(char), fill=255, font=font, anchor="mm", stroke_width=max(stroke, 0), stroke_fill=255
    )
    if stroke < 0:
        layer = layer.filter(ImageFilter.MinFilter(3))
    sx = rng.uniform(*jitter.aspect)
    layer = layer.resize((max(1, int(2 * big * sx)), 2 * big), Image.BILINEAR)
    layer = layer.rotate(rng.uniform(-jitter.rotate, jitter.rotate), Image.BILINEAR, expand=False)
    w = layer.size[0]
    cx = w / 2 + rng.uniform(-jitter.shift, jitter.shift) * big
    cy = big + rng.uniform(-jitter.shift, jitter.shift) * big
    glyph = layer.crop(
        (int(cx - big / 2), int(cy - big / 2), int(cx - big / 2) + big, int(cy - big / 2) + big)
    )
    if rng.random() < jitter.clutter:  # a neighbour's fragment: the next character in a line of text
        side = int(rng.integers(4))
        n_em = int(round(big * rng.uniform(*jitter.scale)))
        nb = Image.new("L", (big, big), 0)
        off = int(big * rng.uniform(0.72, 0.95))
        dx, dy = [(off, 0), (-off, 0), (0, off), (0, -off)][side]
        ImageDraw.Draw(nb).text(
            (big // 2 + dx, big // 2 + dy), chr(other), fill=255, font=_font(path, index, n_em), anchor="mm"
        )
        glyph = Image.fromarray(np.maximum(np.asarray(glyph), np.asarray(nb)))
    a = np.asarray(glyph.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    if rng.random() < jitter.occlude:
        for _ in range(int(rng.integers(1, 3))):
            t = max(1, int(round(size * rng.uniform(0.05, 0.12))))
            p = int(rng.integers(size - t))
            if rng.random() < 0.5:
                a[p : p + t, :] = 0.0
            else:
                a[:, p : p + t] = 0.0
    sigma = rng.uniform(*jitter.blur)
    if sigma > 0.25:
        img = Image.fromarray((a * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma))
        a = np.asarray(img, dtype=np.float32) / 255.0
    bg, ink = rng.uniform(0.0, 0.35), rng.uniform(*jitter.ink)
    ink = max(ink, bg + 0.35)
    a = bg + (ink - bg) * a + rng.normal(0.0, rng.uniform(*jitter.noise), a.shape)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_split(
    paths: list[Path],
    faces: tuple[Face, ...],
    chars: list[int],
    per_face: int,
    size: int,
    seed: int,
    split: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_face`` renderings of every character in every face: uint8 ``[N, 1, S, S]`` and labels ``[N]``,
    ordered by class, then face, then rendering.  Image (c, f, k) draws from its own seeded generator."""
    n = len(chars) * len(faces) * per_face
    images = np.empty((n, 1, size, size), np.uint8)
    labels = np.repeat(np.arange(len(chars)), len(faces) * per_face)
    salt = {"train": 1, "val": 2}[split]
    i = 0
    for c, char in enumerate(chars):
        for f, (face, path) in enumerate(zip(faces, paths)):
            for k in range(per_face):
                rng = np.random.default_rng([seed, salt, c, f, k])
                other = chars[int(rng.integers(len(chars)))]
                images[i, 0] = render_glyph(str(path), face.index, char, other, size, rng)
                i += 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def class_name(char: int) -> str:
    """A class's readable name: the character itself (its code point follows in docs and tables)."""
    return chr(char)


def glyph_set_key(cfg, paths: list[Path], unihan_sha: str, chars: list[int]) -> dict:
    """Everything a rendered set depends on (the cache file's identity)."""
    from hellodd.io import sha256

    return {
        "version": VERSION,
        "faces": {str(p.relative_to(cfg.root)): sha256(p) for p in paths},
        "unihan_sha256": unihan_sha,
        "classes": chars,
        "image_size": cfg.image_size,
        "train_per_face": cfg.glyph_train_renderings,
        "val_per_face": cfg.glyph_val_renderings,
        "seed": cfg.glyph_seed,
        "jitter": JITTER.__dict__,
    } | ({"val_faces": "train"} if cfg.glyph_val_faces == "train" else {})


def load_glyphs(cfg) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str], str]:
    """The rendered splits (from the cache when it holds this exact set), the class names, and the set's id."""
    from hellodd.io import digest, load_tensors, save_tensors, sha256

    paths = face_paths(cfg.root)
    chars = chosen(cfg)
    key = glyph_set_key(cfg, paths, sha256(cfg.glyph_unihan), chars)
    tag = digest(key)
    ranks = f"{cfg.glyph_first + 1}-{cfg.glyph_first + cfg.glyph_classes}" if cfg.glyph_first else ""
    set_id = f"{VERSION}-{cfg.glyph_classes}c{ranks and '-ranks-' + ranks}-{tag[:12]}"
    cached = cache_root() / f"{set_id}.safetensors"
    if cached.is_file():
        tensors, meta = load_tensors(cached)
        if meta.get("key_digest") == tag:
            splits = {s: (tensors[f"{s}_images"], tensors[f"{s}_labels"]) for s in ("train", "val")}
            return splits, [class_name(c) for c in chars], set_id
    ntrain = len(TRAIN_FACES)
    splits = {
        "train": render_split(
            paths[:ntrain],
            TRAIN_FACES,
            chars,
            cfg.glyph_train_renderings,
            cfg.image_size,
            cfg.glyph_seed,
            "train",
        ),
        # the held-out faces, or (a base that must never see them) other renderings of the training faces
        "val": render_split(
            *(
                (paths[ntrain:], VAL_FACES)
                if cfg.glyph_val_faces == "held-out"
                else (paths[:ntrain], TRAIN_FACES)
            ),
            chars,
            cfg.glyph_val_renderings,
            cfg.image_size,
            cfg.glyph_seed,
            "val",
        ),
    }
    tensors = {f"{s}_{k}": t for s, (x, y) in splits.items() for k, t in (("images", x), ("labels", y))}
    save_tensors(cached, tensors, {"key_digest": tag, "set_id": set_id})
    return splits, [class_name(c) for c in chars], set_id


def check_prototype_font(font: str | os.PathLike) -> Path:
    """The prototype head's font file, or the one line that refuses it (asked before any stage)."""
    path = Path(font)
    if not path.is_file():
        raise UserError(f"--set projector.prototype_font={path}: file not found ({INSTALL_HINT})")
    return path


def prototype_images(classes: list[str], font: str | os.PathLike, size: int) -> torch.Tensor:
    """Each class name (one character) drawn once, centred, light on black, in ``font``: float ``[C, 1, S, S]``
    in [0, 1] (the projector's prototype head; no randomness)."""
    from PIL import Image, ImageDraw  # lazy with the rendering

    path = check_prototype_font(font)
    out = np.zeros((len(classes), 1, size, size), np.float32)
    face = _font(str(path), 0, int(size * 0.8))
    for c, name in enumerate(classes):
        img = Image.new("L", (size, size), 0)
        ImageDraw.Draw(img).text((size / 2, size / 2), name, fill=255, font=face, anchor="mm")
        out[c, 0] = np.asarray(img, np.float32) / 255.0
    return torch.from_numpy(out)


def train_counts(cfg) -> list[int]:
    """Training images per class, from the settings and the fonts' coverage (nothing rendered)."""
    chars = chosen(cfg)
    return [len(TRAIN_FACES) * cfg.glyph_train_renderings] * len(chars)


def contact_sheet(cfg, out: str | os.PathLike, classes: int = 12) -> None:
    """A picture of the set: rows of characters, columns of training faces then validation faces."""
    from PIL import Image

    paths = face_paths(cfg.root)
    chars = chosen(cfg)[:classes]
    faces = TRAIN_FACES + VAL_FACES
    s = cfg.image_size
    sheet = np.full((classes * (s + 2), len(faces) * (s + 2) + 8), 128, np.uint8)
    for c, char in enumerate(chars):
        for f, (face, path) in enumerate(zip(faces, paths)):
            rng = np.random.default_rng([cfg.glyph_seed, 3, c, f])
            img = render_glyph(str(path), face.index, char, chars[(c + 1) % len(chars)], s, rng)
            x = f * (s + 2) + (8 if f >= len(TRAIN_FACES) else 0)
            sheet[c * (s + 2) : c * (s + 2) + s, x : x + s] = img
    scale = max(1, math.ceil(1200 / sheet.shape[1]))
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST).save(out)
