#!/usr/bin/env bash
# Which image selection earns its place on the demo?  For each variant: distil IPC 10 (no image update, no
# view adaptation) from a run's teachers, then train ConvNet students on it with hard and teacher labels
# (100 epochs, 3 seeds) and print the evaluate table.  One torch job at a time: about 3.5 min per variant.
#   bash benchmarks/selection.sh RUN          (RUN holds teachers/ and projector/ of a demo run)
set -euo pipefail
run=${1:?usage: benchmarks/selection.sh RUN}
scratch=$(mktemp -d)
export HELLODD_NO_PROGRESS=1
variant() {  # name, then --set overrides of the selection
  local name=$1 out=$scratch/$1
  shift
  mkdir -p "$out" && cp -r "$run/teachers" "$run/projector" "$out/"
  local common=(--preset fashion-mnist --precision 32-true --set distill.update=false --set distill.adapt_steps=0 "$@")
  hellodd distill --out "$out" "${common[@]}" >/dev/null
  echo "== $name: $*"
  hellodd evaluate --out "$out" "${common[@]}" --set 'evaluate.label_sources=[hard,teacher]' \
    --set evaluate.epochs=100 --set evaluate.compile=false 2>/dev/null | grep '^| \(hard\|teacher\) '
}
variant random --set distill.init=random
variant rded-paper-crops-100 --set distill.crop_min_scale=0.08 --set distill.candidates_per_class=100
variant rded-crops-0.5-100 --set distill.crop_min_scale=0.5 --set distill.candidates_per_class=100
variant rded-whole-100 --set distill.crop_min_scale=1.0 --set distill.candidates_per_class=100
variant rded-crops-0.5-20 --set distill.crop_min_scale=0.5 --set distill.candidates_per_class=20
variant rded-whole-20 --set distill.crop_min_scale=1.0 --set distill.candidates_per_class=20
rm -rf "$scratch"
