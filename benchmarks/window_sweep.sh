#!/usr/bin/env bash
# Which weak-teacher window labels best at each IPC?  For each IPC and window (pool epochs of the demo's
# one-epoch trajectory): the projector transferred from that window, the RDED set of that IPC with its view
# adaptation, and students trained with the weak-teachers and projector sources (the preset's protocol:
# 300 epochs, 3 seeds).  Every run folder reuses the teachers of BASE (a finished `hellodd teachers` run).
#   bash benchmarks/window_sweep.sh BASE OUT [IPC ...]
# Then: hellodd report OUT/ipc1-* (or read OUT/*/evaluate/*/results.md).  Run it alone: two torch jobs on
# two cores slow each other down many times.
set -euo pipefail
BASE=${1:?a run folder with teachers/}; OUT=${2:?output folder}; shift 2
IPCS=${*:-1 10}
declare -A WINDOWS=(
  [w05-15]="0.05,0.1,0.15" [w15-30]="0.15,0.2,0.3" [w20-40]="0.2,0.3,0.4" [w40-75]="0.4,0.55,0.75"
)
declare -A PICK=([1]="w05-15 w15-30 w20-40 w40-75" [10]="w15-30 w20-40 w40-75" [50]="w20-40 w40-75")
for ipc in $IPCS; do
  for name in ${PICK[$ipc]}; do
    dir="$OUT/ipc$ipc-$name"
    mkdir -p "$dir"
    [ -d "$dir/teachers" ] || cp -r "$BASE/teachers" "$dir/teachers"
    set_=(--out "$dir" --set "projector.teacher_epochs=${WINDOWS[$name]}" --set "distill.ipc=$ipc" ${EXTRA:-})
    hellodd projector "${set_[@]}"
    hellodd distill "${set_[@]}"
    hellodd evaluate "${set_[@]}" --set evaluate.label_sources=weak-teachers,projector
  done
done
