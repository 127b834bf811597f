#!/usr/bin/env bash
# Runs a command with a fresh local SQS-compatible server (moto_server) on a
# free loopback port (or MOTO_PORT), creates the queues named in QUEUES (with
# template.yaml's 14-day retention), and
# stops the server when the command ends, fails or is interrupted. The
# command sees:
#   RETRYQ_TEST_SQS_ENDPOINT  the server's URL
#   AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_S3  the same, for the SDKs
#   AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  dummy local values
set -euo pipefail
. "$(dirname "$0")/lib.sh"
use_python_scripts

port=${MOTO_PORT:-$(free_port)}
log=$(mktemp -t moto.XXXXXX.log)
# In its own session, so a Ctrl-C reaches the command first and the server
# stays up while the command shuts down; stopped below in every case.
setsid moto_server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
stop() { kill -TERM -- "-$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; rm -f "$log"; }
trap stop EXIT
trap 'exit 130' INT TERM

# Wait (at most 30 s) until the server answers.
for _ in $(seq 1 150); do
  if "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "with-moto: moto_server exited:" >&2; cat "$log" >&2; exit 1
  fi
  sleep 0.2
done

export RETRYQ_TEST_SQS_ENDPOINT="http://127.0.0.1:$port"
export AWS_ENDPOINT_URL_SQS="$RETRYQ_TEST_SQS_ENDPOINT"
# moto serves every service on one port: DynamoDB for STATE_TABLE.
export AWS_ENDPOINT_URL_DYNAMODB="$RETRYQ_TEST_SQS_ENDPOINT"
# ... and S3, for payloads offloaded by the SQS Extended Client.
export AWS_ENDPOINT_URL_S3="$RETRYQ_TEST_SQS_ENDPOINT"
if [ -n "${QUEUES:-}" ]; then
  # boto3 comes with moto.
  "$PYTHON" - "$RETRYQ_TEST_SQS_ENDPOINT" $QUEUES <<'PY'
import sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
# 14 days' retention, as template.yaml's queues.
for name in sys.argv[2:]:
    url = sqs.create_queue(QueueName=name, Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    print("with-moto: queue", url)
PY
fi
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_EC2_METADATA_DISABLED=true
echo "with-moto: SQS at $RETRYQ_TEST_SQS_ENDPOINT"
"$@"
