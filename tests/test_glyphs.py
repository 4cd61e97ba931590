"""The glyphs data: classes every face covers, a split by typeface, seeded renderings, a cache bound to its
inputs, and one line for missing fonts.  Reads the fonts `make glyphs` installs."""

import bz2
import subprocess
from dataclasses import replace

import pytest
import torch

from conftest import PYTHON, cli_env
from hellodd import glyphs
from hellodd.config import DataConfig
from hellodd.errors import UserError

pytestmark = pytest.mark.skipif(
    not all(
        (glyphs.Path(glyphs.FONTS_DEBIAN) / f.file).is_file() for f in glyphs.TRAIN_FACES + glyphs.VAL_FACES
    )
    or not glyphs.Path(glyphs.UNIHAN_DEBIAN).is_file(),
    reason="the glyph fonts are not installed (make glyphs); make test installs them",
)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("HELLODD_CACHE", str(tmp_path / "cache"))
    return DataConfig(
        name="glyphs",
        root=glyphs.FONTS_DEBIAN,
        image_size=16,
        glyph_classes=12,
        glyph_train_renderings=1,
        glyph_val_renderings=1,
    )


def test_classes_are_the_most_common_characters_every_face_covers(cfg):
    chars = glyphs.choose_classes(cfg.root, cfg.glyph_unihan, 12)
    assert chars[0] == ord("一")  # grade 1, the first in code-point order
    ranked = glyphs.ranking(cfg.glyph_unihan)
    assert chars == [c for c in ranked if c in set(chars)][:12]  # in rank order
    with pytest.raises(UserError, match="only .* ranked characters are in every face"):
        glyphs.choose_classes(cfg.root, cfg.glyph_unihan, 10**6)


def test_the_split_is_by_typeface_and_seeded(cfg):
    splits, classes, set_id = glyphs.load_glyphs(cfg)
    (xt, yt), (xv, _yv) = splits["train"], splits["val"]
    assert len(classes) == 12 and classes[0] == "一"
    assert xt.shape == (12 * len(glyphs.TRAIN_FACES), 1, 16, 16) and xv.shape[0] == 12 * len(glyphs.VAL_FACES)
    assert torch.equal(torch.bincount(yt), torch.full((12,), len(glyphs.TRAIN_FACES)))
    train_files = {f.file for f in glyphs.TRAIN_FACES}
    assert not train_files & {f.file for f in glyphs.VAL_FACES}  # no validation face is seen in training
    # the same settings render the same bytes (no cache: a fresh render); another seed other bytes
    again = glyphs.render_split(
        glyphs.face_paths(cfg.root)[: len(glyphs.TRAIN_FACES)],
        glyphs.TRAIN_FACES,
        glyphs.choose_classes(cfg.root, cfg.glyph_unihan, 12),
        1,
        16,
        cfg.glyph_seed,
        "train",
    )
    assert torch.equal(again[0], xt)
    other, _, other_id = glyphs.load_glyphs(replace(cfg, glyph_seed=1))
    assert not torch.equal(other["train"][0], xt) and other_id != set_id
    # renderings differ within a class (jitter), and images are not blank
    assert (xt.float().std((1, 2, 3)) > 5).float().mean() > 0.9
    assert not torch.equal(xt[0], xt[1])


def test_the_cache_is_bound_to_its_inputs(cfg):
    splits, _, set_id = glyphs.load_glyphs(cfg)
    cached = glyphs.cache_root() / f"{set_id}.safetensors"
    assert cached.is_file()
    again, _, _ = glyphs.load_glyphs(cfg)  # read back, the same tensors
    assert torch.equal(again["val"][0], splits["val"][0])
    _, _, bigger = glyphs.load_glyphs(replace(cfg, image_size=20))  # another setting: another file
    assert bigger != set_id
    # a file under the right name made from other inputs (its recorded digest differs) is rendered again
    from hellodd.io import load_tensors, save_tensors

    tensors, meta = load_tensors(cached)
    tensors["train_images"] = torch.zeros_like(tensors["train_images"])
    save_tensors(cached, tensors, {**meta, "key_digest": "something else"})
    fresh, _, _ = glyphs.load_glyphs(cfg)
    assert torch.equal(fresh["train"][0], splits["train"][0])


def test_a_ranking_file_and_a_font_folder_are_checked(tmp_path):
    f = tmp_path / "Unihan.txt.bz2"
    f.write_bytes(bz2.compress(b"U+4E00\tkGradeLevel\t1\nU+4E8C\tkFrequency\t1\nU+4E09\tkGradeLevel\t2\n"))
    assert glyphs.ranking(f) == [0x4E00, 0x4E09, 0x4E8C]  # grade first, then frequency
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="no kGradeLevel or kFrequency"):
        glyphs.ranking(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="fonts-arphic-uming; make glyphs"):
        glyphs.face_paths(tmp_path)


def test_missing_fonts_are_one_line_before_any_stage(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            PYTHON,
            "-m",
            "hellodd",
            "run",
            "--preset",
            "glyphs-100",
            "--data",
            str(tmp_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "make glyphs" in lines[0] and "truetype/arphic/uming.ttc" in lines[0]
    assert not out.exists()  # nothing written: not even the lock
