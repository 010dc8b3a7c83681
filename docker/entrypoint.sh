#!/bin/sh
# What the container runs: `lab` (JupyterLab, the default), `pipeline` (dvc repro),
# `fetch` (fetch and verify every hub model and dataset in params.yaml), or any command.
# JupyterLab refuses to start without a token or a password hash from the environment.
set -eu

case "${1:-lab}" in
  lab)
    if [ -z "${JUPYTER_TOKEN:-}" ] && [ -z "${JUPYTER_PASSWORD_HASH:-}" ]; then
      echo "error: set JUPYTER_TOKEN (or JUPYTER_PASSWORD_HASH) in .env: JupyterLab will not start without authentication." >&2
      exit 64
    fi
    if [ "${JUPYTER_TOKEN:-}" = "replace-with-a-long-random-token" ]; then
      echo "error: JUPYTER_TOKEN is still the example value from .env.example: put a long random token in .env." >&2
      exit 64
    fi
    if [ $# -gt 0 ]; then shift; fi
    if [ -n "${JUPYTER_PASSWORD_HASH:-}" ]; then
      set -- --PasswordIdentityProvider.hashed_password="${JUPYTER_PASSWORD_HASH}" "$@"
    fi
    # The token is read by Jupyter from JUPYTER_TOKEN; it never appears on a command line.
    exec jupyter lab --ip=0.0.0.0 --port="${JUPYTER_PORT:-8888}" --no-browser \
      --ServerApp.root_dir="${HARMONIA_ROOT:-/workbench}" --LabApp.news_url= "$@"
    ;;
  pipeline)
    shift
    exec dvc repro "$@"
    ;;
  fetch)
    shift
    harmonia models fetch --all "$@"
    harmonia datasets fetch --all "$@"
    harmonia models verify --full
    exec harmonia datasets verify --full
    ;;
  *)
    exec "$@"
    ;;
esac
