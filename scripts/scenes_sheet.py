"""Draw the first scenes of a scenes preset with their class maps (the README's picture):

python scripts/scenes_sheet.py --preset fashion-mnist-scenes --count 8 --to docs/fashion-mnist-scenes.png
"""

import argparse

from hellodd.config import preset
from hellodd.segmentation.data import load_segmentation
from hellodd.segmentation.sheet import scene_sheet

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="fashion-mnist-scenes")
parser.add_argument("--count", type=int, default=8)
parser.add_argument("--to", required=True)
args = parser.parse_args()
cfg = preset(args.preset)
bundle = load_segmentation(cfg.data, cfg.engine.seed)
scene_sheet(bundle.train.images[: args.count], bundle.train.masks[: args.count], bundle.classes).save(args.to)
print(f"{args.to}: {args.count} of {len(bundle.train)} train scenes ({bundle.source})")
