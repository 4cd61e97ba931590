#!/usr/bin/env bash
# Install everything hellodd needs on a fresh Debian/Ubuntu machine. Idempotent: a second run only checks.
#   - Debian's dataset-fashion-mnist (the demo's real data, IDX files in /usr/share/datasets/fashion-mnist)
#   - the hellodd package (editable) with its pinned dependencies, the Hugging Face extra and the test tools
#   - with --glyphs: the CJK font packages and unicode-data of the glyphs presets (hellodd.glyphs names them)
#   - a wheel that only carries files (its declared dependencies are not needed): foolbox's real test
#     images (fixtures)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

"$PY" -m pip install -q --disable-pip-version-check -e ".[dev,hf]"
"$PY" -m pip install -q --disable-pip-version-check --no-deps "foolbox==3.3.4"

if [ "${1:-}" = "--glyphs" ]; then
  mapfile -t PKGS < <("$PY" -c "from hellodd.glyphs import FONT_PACKAGES; print('\n'.join(FONT_PACKAGES))")
  MISSING=()
  for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || MISSING+=("$p"); done
  if [ "${#MISSING[@]}" -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
  fi
fi
