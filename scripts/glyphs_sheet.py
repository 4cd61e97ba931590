"""Draw the glyphs data's contact sheet (docs/): rows of classes, columns of the training faces, then (after a
gap) the validation faces, each one seeded rendering:

python scripts/glyphs_sheet.py --preset glyphs-1000 --rows 12 --to docs/glyphs-contact-sheet.png \
    --classes docs/glyphs-classes.md
"""

import argparse

from hellodd.config import preset
from hellodd.glyphs import FONT_PACKAGES, TRAIN_FACES, VAL_FACES, choose_classes, contact_sheet

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="glyphs-1000")
parser.add_argument("--rows", type=int, default=12)
parser.add_argument("--to", required=True)
parser.add_argument("--classes", help="also write the class list and the faces (Markdown) here")
args = parser.parse_args()
cfg = preset(args.preset)
contact_sheet(cfg.data, args.to, args.rows)
print(
    f"{args.to}: {args.rows} classes x {len(TRAIN_FACES)} training faces | {len(VAL_FACES)} validation faces"
)
if args.classes:
    chars = choose_classes(cfg.data.root, cfg.data.glyph_unihan, cfg.data.glyph_classes)
    lines = [
        f"# The classes and faces of `{cfg.preset}`",
        "",
        f"Made by `python scripts/glyphs_sheet.py --preset {cfg.preset} ... --classes` (Debian packages: "
        + ", ".join(f"`{p}`" for p in FONT_PACKAGES)
        + "). Class i is the i-th character below; `glyphs-100` takes the first 100.",
        "",
        "| split | face | design | file |",
        "|---|---|---|---|",
    ]
    for split, faces in (("train", TRAIN_FACES), ("val", VAL_FACES)):
        lines += [f"| {split} | {f.package} | {f.design} | `{f.file}` |" for f in faces]
    lines += ["", "| classes | characters (code points of the first and last) |", "|---|---|"]
    for i in range(0, len(chars), 50):
        part = chars[i : i + 50]
        lines.append(
            f"| {i}-{i + len(part) - 1} | {''.join(map(chr, part))} (U+{part[0]:04X} .. U+{part[-1]:04X}) |"
        )
    with open(args.classes, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{args.classes}: {len(chars)} classes, {len(TRAIN_FACES) + len(VAL_FACES)} faces")
