#!/usr/bin/env bash
# System packages the single-machine stack needs: a JDK 17 and Maven (Kafka, Elasticsearch) and the PostgreSQL
# server (tests; SQLite stays the embedded default). Installs only what is missing, from Debian's packages.
set -euo pipefail
need=()
# javac too: the launcher compiles a small compatibility plugin for the single-node Elasticsearch
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "riskstream needs these Debian packages: ${need[*]}"
  echo "install them with: sudo apt-get install -y ${need[*]}"
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
# Debian starts a cluster of its own on 5432; riskstream runs its own on the configured port instead.
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header 2>/dev/null | awk '{print $1, $2}' | while read -r ver name; do
    pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
  done
fi
