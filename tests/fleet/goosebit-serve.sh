#!/usr/bin/env bash
#! Serves goosebit (a hawkBit DDI server) on 127.0.0.1:PORT with its database and
#! artifacts in DIR, for the fleet client's tests. The venv comes from
#! `xtask/scripts/host-deps.sh` (pinned in goosebit-requirements.txt).
set -euo pipefail
dir=$1 port=$2
gb="${GOOSEBIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/goosebit}"
if [ ! -x "$gb/bin/python" ]; then
  echo "goosebit is not installed: run xtask/scripts/host-deps.sh" >&2
  exit 3
fi
pkg=$("$gb/bin/python" -c 'import goosebit, os; print(os.path.dirname(goosebit.__file__))')
mkdir -p "$dir"
cd "$dir"
cat >pyproject.toml <<TOML
[tool.aerich]
tortoise_orm = "goosebit.db.config.TORTOISE_CONF"
location = "$pkg/db/migrations"
src_folder = "./."
TOML
export GOOSEBIT_DB_URI="sqlite:///$dir/db.sqlite3"
export GOOSEBIT_ARTIFACTS_DIR="$dir/artifacts"
export GOOSEBIT_POLL_TIME="${GOOSEBIT_POLL_TIME:-00:00:30}"
"$gb/bin/aerich" upgrade >aerich.log 2>&1 || { cat aerich.log >&2; exit 1; }
exec "$gb/bin/python" -m uvicorn goosebit:app --host 127.0.0.1 --port "$port"
