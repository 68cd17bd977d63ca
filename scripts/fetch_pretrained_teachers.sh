#!/usr/bin/env bash
# Download RepDistiller's CIFAR-100 teachers (HobbitLong/RepDistiller
# scripts/fetch_pretrained_teachers.sh lists them) into its layout
#   <dest>/<arch>_vanilla/ckpt_epoch_240.pth
# then check that each one loads into its registry architecture (python -m registry.check_teachers).
#
#   bash scripts/fetch_pretrained_teachers.sh                  # into save/models of the repository
#   bash scripts/fetch_pretrained_teachers.sh --dest /data/teachers
#   RD_TEACHER_URL=http://mirror/repo/ bash scripts/fetch_pretrained_teachers.sh   # another server
#   bash scripts/fetch_pretrained_teachers.sh --no-check       # download only
#
# Files already present are kept. Offline, the first failed download prints one line (the URL,
# and where to put the files by hand) and the script exits with status 1.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE_URL="${RD_TEACHER_URL:-http://shape2prog.csail.mit.edu/repo/}"
BASE_URL="${BASE_URL%/}"
TIMEOUT="${RD_TEACHER_TIMEOUT:-30}"  # seconds to wait for a connection
DEST="$REPO_ROOT/save/models"
TEACHERS=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)

CHECK=1

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dest) [ $# -ge 2 ] || { echo "fetch_pretrained_teachers: --dest needs a folder" >&2; exit 2; }
            DEST="$2"; shift 2 ;;
    --dest=*) DEST="${1#--dest=}"; shift ;;
    --no-check) CHECK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fetch_pretrained_teachers: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEST" in /*) ;; *) DEST="$PWD/$DEST" ;; esac  # relative to the caller's folder

download() {  # url target: write to a temporary file first, so no partial checkpoint is left
  local tmp="$2.part"
  if command -v curl >/dev/null 2>&1; then
    curl --fail --silent --show-error --location --connect-timeout "$TIMEOUT" -o "$tmp" "$1" 2>/dev/null
  else
    wget --quiet --timeout="$TIMEOUT" --tries=1 -O "$tmp" "$1" 2>/dev/null
  fi || { rm -f "$tmp"; return 1; }
  mv "$tmp" "$2"
}

for arch in "${TEACHERS[@]}"; do
  target="$DEST/${arch}_vanilla/ckpt_epoch_240.pth"
  [ -s "$target" ] && continue
  mkdir -p "$(dirname "$target")"
  url="$BASE_URL/${arch}_vanilla/ckpt_epoch_240.pth"
  if ! download "$url" "$target"; then
    rmdir "$(dirname "$target")" 2>/dev/null || true
    echo "fetch_pretrained_teachers: could not download $url (this machine seems to be offline or the server is unreachable); copy the files by hand to $DEST/<arch>_vanilla/ckpt_epoch_240.pth for <arch> in ${TEACHERS[*]}, then run: python -m registry.check_teachers $DEST" >&2
    exit 1
  fi
done

echo "fetch_pretrained_teachers: ${#TEACHERS[@]} teachers in $DEST"
[ "$CHECK" = 1 ] || exit 0
cd "$REPO_ROOT"
exec python -m registry.check_teachers "$DEST"
