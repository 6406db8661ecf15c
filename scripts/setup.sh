#!/usr/bin/env bash
# Sets up .venv with archc and everything it needs; `--test` adds the test and
# benchmark extras (torchvision, transformers, torchinfo...). Idempotent.
#
# PyTorch comes first and pinned: this machine has torch 2.14.1 and torchvision
# 0.29.1 as local files; an unpinned `pip install torch` would fetch a
# multi-GB build from the network.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# Graphviz's `dot` renders diagrams (`archc render`); it is a system package.
if ! command -v dot >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq graphviz) >/dev/null
  else
    echo "note: Graphviz's dot is missing; install it with: sudo apt-get install graphviz" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install -q -e ".${extras}"
