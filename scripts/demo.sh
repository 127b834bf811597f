#!/usr/bin/env bash
# `make demo`: the processor's main job, locally, end to end.
#
# Starts (and stops again, also on Ctrl-C) a local SQS server with the queues
# the sample events name, the demo destination on 127.0.0.1:9100, and the
# function under `cargo lambda watch`; invokes it with events/mixed-batch.json
# (one record for each row of the outcome table), then shows the partial
# batch response and the dead letters with their FailureReason.
#
# Run through scripts/with-moto.sh, which provides RETRYQ_TEST_SQS_ENDPOINT.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
: "${RETRYQ_TEST_SQS_ENDPOINT:?run me through scripts/with-moto.sh}"
sqs=$RETRYQ_TEST_SQS_ENDPOINT
dlq_url="$sqs/123456789012/retryq-events-dlq"
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
logs=$(mktemp -d -t retryq-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building the function and the demo destination"
cargo build --quiet --bin retryq-processor --example demo_destination

step "starting the demo destination on 127.0.0.1:9100"
setsid target/debug/examples/demo_destination >"$logs/destination.log" 2>&1 &
pids+=($!)

step "starting retryq-processor under cargo lambda watch (port $port)"
setsid env AWS_ENDPOINT_URL="$sqs" DLQ_URL="$dlq_url" ALLOW_PRIVATE_DESTINATIONS=true RUST_LOG=info \
  cargo lambda watch --ignore-changes --invoke-address 127.0.0.1 --invoke-port "$port" >"$logs/watch.log" 2>&1 &
pids+=($!)

step "invoking it with events/mixed-batch.json (7 records, one per outcome)"
answer=""
for _ in $(seq 1 300); do
  if answer=$(cargo lambda invoke retryq-processor --invoke-address 127.0.0.1 --invoke-port "$port" \
      --data-file events/mixed-batch.json 2>/dev/null); then
    break
  fi
  sleep 1
done
[ -n "$answer" ] || { echo "the function did not answer; its log:"; cat "$logs/watch.log"; exit 1; }

step "what the function did with each record"
grep -o 'record processed.*' "$logs/watch.log" | sed 's/^record processed /  /' || true

step "partial batch response (records SQS will deliver again)"
echo "  $answer"

step "dead letters in retryq-events-dlq"
"$PYTHON" - "$sqs" "$dlq_url" <<'PY'
import json, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
msgs = sqs.receive_message(QueueUrl=sys.argv[2], MaxNumberOfMessages=10,
                           MessageAttributeNames=["All"]).get("Messages", [])
print(f"  {'FailureReason':<20} {'Attempt':>7} {'Status':>6}  LastError")
for m in msgs:
    a = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
    print(f"  {a.get('FailureReason',''):<20} {a.get('AttemptCount',''):>7} {a.get('LastStatusCode','-'):>6}  {a.get('LastError','')[:70]}")
PY
echo
echo "Done. Everything started for the demo is being stopped."
