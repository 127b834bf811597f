#!/usr/bin/env bash
# Installs the tools `make test` needs when they are missing: the local SQS
# server (moto[server]), cargo-lambda, cfn-lint, standardwebhooks and amazon-sqs-extended-client, all from PyPI, plus the
# clippy/rustfmt components, and the SAM CLI (PyPI aws-sam-cli, in its own
# virtualenv under .tools/sam: its pinned dependencies stay apart from moto's). With WITH_ZIG=1 also zig (PyPI ziglang) and the
# arm64 Rust target, for `make build`. Also Debian's chromium and
# chromium-driver, for the console's browser tests.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
use_python_scripts

missing=()
command -v moto_server >/dev/null && "$PYTHON" -c 'import flask, moto.server' 2>/dev/null || missing+=("moto[server]")
command -v cfn-lint >/dev/null || missing+=("cfn-lint")
command -v cargo-lambda >/dev/null || missing+=("cargo-lambda")
# The reference Standard Webhooks verifier of tests/interop (botocore, the
# SigV4 reference, comes with moto).
"$PYTHON" -c 'import standardwebhooks' 2>/dev/null || missing+=("standardwebhooks")
# The SQS Extended Client (claim check) that tests/interop checks payload pointers with.
"$PYTHON" -c 'import sqs_extended_client' 2>/dev/null || missing+=("amazon-sqs-extended-client")
if [ "${WITH_ZIG:-0}" = 1 ]; then
  "$PYTHON" -c 'import ziglang' 2>/dev/null || missing+=("ziglang")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "tools: installing ${missing[*]}"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi

sam_dir="$(dirname "$0")/../.tools/sam"
if [ ! -x "$sam_dir/bin/sam" ]; then
  echo "tools: installing aws-sam-cli into .tools/sam"
  rm -rf "$sam_dir"
  "$PYTHON" -m venv "$sam_dir"
  "$sam_dir/bin/pip" install --quiet --disable-pip-version-check aws-sam-cli
fi

# Headless Chromium and its WebDriver, for the console's browser tests
# (tests/aws/console): Debian's packages. CI runs as root; elsewhere sudo.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "tools: installing chromium and chromium-driver (apt)"
  apt_get=(apt-get)
  [ "$(id -u)" = 0 ] || apt_get=(sudo apt-get)
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q chromium chromium-driver >/dev/null ||
    { "${apt_get[@]}" update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q chromium chromium-driver >/dev/null; }
fi

for component in clippy rustfmt; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
if [ "${WITH_ZIG:-0}" = 1 ]; then
  rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
fi

echo "tools: moto_server $(command -v moto_server), $(cfn-lint --version), $(cargo-lambda --version 2>/dev/null || cargo lambda --version), $("$sam_dir/bin/sam" --version), $(chromium --version 2>/dev/null | head -1)"
