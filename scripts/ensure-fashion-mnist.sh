#!/usr/bin/env bash
# Make sure Fashion-MNIST's IDX files are where the Debian package puts them; install it if we may.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
want=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
have_all() { for f in "${want[@]}"; do [ -f "$dir/$f" ] || return 1; done; }

have_all && exit 0
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" != none ]; then
    echo "Fashion-MNIST is missing: installing the Debian package dataset-fashion-mnist" >&2
    $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    have_all && exit 0
  fi
fi
cat >&2 <<MSG
Fashion-MNIST was not found in $dir and could not be installed here.
Install it with:   sudo apt-get install dataset-fashion-mnist
or put the four IDX files (${want[*]}) in a folder and pass --data-dir FOLDER to unlearnkit.
MSG
exit 1
