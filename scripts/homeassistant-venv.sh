#!/usr/bin/env bash
# A virtual environment holding a real Home Assistant core for the tests (tests/interop/homeassistant).
#   scripts/homeassistant-venv.sh VENV
# Quiet and quick when VENV already holds what requirements.txt names.
set -euo pipefail
venv=$1
requirements=tests/interop/homeassistant/requirements.txt
stamp="$venv/.requirements-$(sha256sum "$requirements" | cut -c1-16)"
[ -e "$stamp" ] && exit 0
echo "installing Home Assistant into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/pip" --quiet --disable-pip-version-check)
version=$(sed -n 's/^homeassistant==//p' "$requirements")
"${pip[@]}" download --no-deps "homeassistant==$version" -d "$venv/wheels"
# The constraints Home Assistant pins its own dependencies with, from inside its wheel.
"$venv/bin/python" - "$venv" "$version" <<'PY'
import glob, sys, zipfile
venv, version = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{venv}/wheels/homeassistant-{version}-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(f"{venv}/constraints.txt", "wb") as out:
    out.write(z.read("homeassistant/package_constraints.txt"))
PY
"${pip[@]}" install -c "$venv/constraints.txt" -r "$requirements"
touch "$stamp"
