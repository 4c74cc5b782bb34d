#!/usr/bin/env bash
# The Compose Specification's JSON schema, taken from the PyPI wheel of docker-compose 1.29.2
# (compose/config/compose_spec.json) into .cache/compose-schema/. Nothing is vendored in the repo.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.cache/compose-schema"
py="${PYTHON:-$root/.venv/bin/python}"
[ -f "$out/compose_spec.json" ] && exit 0
mkdir -p "$out"
"$py" -m pip download -q --no-deps "docker-compose==1.29.2" -d "$out" 2>/dev/null
"$py" - "$out" <<'PY'
import glob, sys, zipfile
out = sys.argv[1]
with zipfile.ZipFile(glob.glob(f"{out}/docker_compose-*.whl")[0]) as z:
    open(f"{out}/compose_spec.json", "wb").write(z.read("compose/config/compose_spec.json"))
PY
