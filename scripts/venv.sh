#!/usr/bin/env bash
# Create .venv when missing and install requirements.txt when it changed.
# Debian/Ubuntu ship python3 without the venv module's pip (package python3-venv);
# as root we install it, otherwise we say exactly what to run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version 2>&1)"
  if ! $PYTHON -m venv .venv 2>/tmp/tether-venv.err; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "==> python3-venv is missing: installing it with apt-get"
      ver=$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      apt-get update -qq && (apt-get install -y -qq "python${ver}-venv" || apt-get install -y -qq python3-venv)
      $PYTHON -m venv .venv
    else
      cat /tmp/tether-venv.err >&2
      echo "tether: cannot create .venv; install the venv module first: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing requirements.txt into .venv"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$stamp"
fi
