#!/usr/bin/env bash
# Make sure the fortune cookie files (the `fortunes` text data set) are where the Debian package puts them;
# install the package if we may.
set -euo pipefail
dir=/usr/share/games/fortunes
have() { [ -f "$dir/cookie" ]; }

have && exit 0
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" != none ]; then
    echo "The fortunes text is missing: installing the Debian package fortunes" >&2
    $sudo apt-get install -y -q fortunes >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q fortunes >/dev/null; }
    have && exit 0
  fi
fi
cat >&2 <<MSG
The fortune cookie files were not found in $dir and could not be installed here.
Install them with:   sudo apt-get install fortunes
or pass --data-dir FOLDER (a folder of fortune files), or use the data set 'text' with any UTF-8 file.
MSG
exit 1
