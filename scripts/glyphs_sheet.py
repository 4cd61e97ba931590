"""Draw the glyphs data's contact sheet (docs/): rows of classes, columns of the training faces, then (after a
gap) the validation faces, each one seeded rendering:

python scripts/glyphs_sheet.py --preset glyphs-1000 --rows 12 --to docs/glyphs-contact-sheet.png
"""

import argparse

from hellodd.config import preset
from hellodd.glyphs import TRAIN_FACES, VAL_FACES, contact_sheet

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="glyphs-1000")
parser.add_argument("--rows", type=int, default=12)
parser.add_argument("--to", required=True)
args = parser.parse_args()
cfg = preset(args.preset)
contact_sheet(cfg.data, args.to, args.rows)
print(
    f"{args.to}: {args.rows} classes x {len(TRAIN_FACES)} training faces | {len(VAL_FACES)} validation faces"
)
