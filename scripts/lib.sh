# Shared shell helpers for scripts/*.sh; source it, don't run it.
#   PYTHON       the Python that runs the PyPI tools (default python3)
#   use_python_scripts  puts that Python's scripts directory (moto_server,
#                cfn-lint, cargo-lambda) and ~/.cargo/bin on PATH
#   free_port    prints a free TCP port on 127.0.0.1
#   target_dir   prints where cargo puts its builds (CARGO_TARGET_DIR, a
#                config's build.target-dir, or ./target), from cargo metadata

PYTHON=${PYTHON:-python3}

use_python_scripts() {
  local scripts_dir
  scripts_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  export PATH="$scripts_dir:$HOME/.cargo/bin:$PATH"
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

target_dir() {
  cargo metadata --format-version 1 --no-deps |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
