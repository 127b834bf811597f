#!/usr/bin/env bash
# `make demo`: retryq's whole loop on one machine.
#
# Run through scripts/with-moto.sh (a local SQS server). This script creates
# the retry queue and its DLQ with the redrive policy of template.yaml, starts
# the demo destination (which fails in every way the outcome table lists),
# runs retryq-processor under `cargo lambda watch`, feeds it with
# `retryq trigger`, enqueues a mix of messages with `retryq enqueue`, shows
# progress until the queue is settled, then prints a summary and the
# `retryq dlq list`. Every process it starts is stopped at the end, also on
# Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
: "${RETRYQ_TEST_SQS_ENDPOINT:?run me through scripts/with-moto.sh}"
export AWS_ENDPOINT_URL=$RETRYQ_TEST_SQS_ENDPOINT
MAX_ATTEMPTS=4
SETTLE_LIMIT=110
WARMUP_LIMIT=900
watch_port=$(free_port)
dest_port=$(free_port)
dest="http://127.0.0.1:$dest_port"
logs=$(mktemp -d -t retryq-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: stopping everything"; exit 130' INT TERM
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
target=$(target_dir)
retryq=$target/debug/retryq

# A fresh clone's first build takes minutes on two cores: cargo shows its
# progress. retryq-processor is built on its own, with the same command
# `cargo lambda watch` runs: built together with the example, whose
# dev-dependencies turn on more features of shared crates, it would be a
# different build, and the watch would compile everything again.
step "building retryq and the demo destination (a fresh clone's first build takes a few minutes)"
cargo build --bin retryq --example demo_destination
step "building retryq-processor, as cargo lambda watch will run it"
cargo build --bin retryq-processor

step "creating the retry queue and its DLQ (redrive policy: maxReceiveCount = 5, as in template.yaml)"
read -r queue_url dlq_url < <("$PYTHON" - 5 <<'PY'
import json, os, sys, boto3
sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
dlq = sqs.create_queue(QueueName="retryq-demo-dlq", Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
q = sqs.create_queue(QueueName="retryq-demo", Attributes={
    "VisibilityTimeout": "180",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": sys.argv[1]})})["QueueUrl"]
print(q, dlq)
PY
)
echo "  retry queue $queue_url"
echo "  DLQ         $dlq_url"

step "starting the demo destination on $dest"
DEMO_DESTINATION=127.0.0.1:$dest_port setsid "$target/debug/examples/demo_destination" >"$logs/destination.log" 2>&1 &
pids+=($!)

step "starting retryq-processor under cargo lambda watch (127.0.0.1:$watch_port)"
setsid env DLQ_URL="$dlq_url" MAX_ATTEMPTS=$MAX_ATTEMPTS BACKOFF_BASE_SECONDS=1 BACKOFF_MAX_SECONDS=4 \
  MAX_CONCURRENCY=16 ALLOW_PRIVATE_DESTINATIONS=true RUST_LOG=info \
  cargo lambda watch --ignore-changes --invoke-address 127.0.0.1 --invoke-port "$watch_port" >"$logs/watch.log" 2>&1 &
pids+=($!)

# The settle clock starts only once the function has answered: should the
# watch still compile something, that is shown as a build, not as a queue
# that does not move.
step "waiting for cargo lambda watch to start the function (an empty batch as the first call)"
warm_started=$(date +%s)
until cargo lambda invoke retryq-processor --invoke-address 127.0.0.1 --invoke-port "$watch_port" \
    --data-ascii '{"Records":[]}' >"$logs/warmup.log" 2>&1; do
  waited=$(( $(date +%s) - warm_started ))
  if [ "$waited" -ge "$WARMUP_LIMIT" ]; then
    echo "the function did not answer within ${WARMUP_LIMIT}s; cargo lambda watch's log:"; tail -20 "$logs/watch.log"; exit 1
  fi
  building=$(grep -oE '(Compiling|Building|Finished) [^ ]+( v[^ ]+)?' "$logs/watch.log" | tail -1 || true)
  printf '  %3ss  %s\n' "$waited" "${building:-starting}"
  sleep 3
done
echo "  the function answered after $(( $(date +%s) - warm_started ))s"

step "starting retryq trigger (the SQS event source, emulated)"
setsid $retryq trigger --queue-url "$queue_url" --function-url "http://127.0.0.1:$watch_port" --wait-seconds 1 \
  >"$logs/trigger.log" 2>&1 &
pids+=($!)

step "enqueueing 40 Retry Messages with retryq enqueue"
enqueue() { $retryq enqueue --queue-url "$queue_url" --url "$dest/$1" --data '{"demo":true}' \
  -H 'content-type: application/json' --originating-service demo >/dev/null; }
for i in $(seq 1 15); do enqueue "ok/$i"; done;      echo "  15 that succeed at once"
for i in $(seq 1 8);  do enqueue "flaky/$i"; done;   echo "   8 that get two 503s, then succeed"
for i in $(seq 1 6);  do enqueue "limited/$i"; done; echo "   6 that get 429 + Retry-After: 2, then succeed"
for i in $(seq 1 5);  do enqueue "missing/$i"; done; echo "   5 that get 404 (non-retryable)"
for i in $(seq 1 3);  do enqueue "down/$i"; done;    echo "   3 whose destination stays down (503 until attempts run out)"
"$PYTHON" - "$queue_url" <<'PY'
import os, sys, boto3
sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
for body in ['{"id": "broken-1", "request": {"method": "GET"}}', 'not JSON at all', '{"id": "bad id!", "destinationUrl": "https://x.example/", "request": {"method": "GET"}}']:
    sqs.send_message(QueueUrl=sys.argv[1], MessageBody=body)
PY
echo "   3 invalid messages"
expected_dead=11

step "processing"
depth() { "$PYTHON" - "$1" <<'PY'
import os, sys, boto3
sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
a = sqs.get_queue_attributes(QueueUrl=sys.argv[1], AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
print(a["ApproximateNumberOfMessages"], a["ApproximateNumberOfMessagesNotVisible"])
PY
}
started=$(date +%s)
while :; do
  read -r visible hidden < <(depth "$queue_url")
  read -r dead _ < <(depth "$dlq_url")
  delivered=$("$PYTHON" -c "import json,urllib.request; print(json.load(urllib.request.urlopen('$dest/stats', timeout=2))['delivered'])")
  elapsed=$(( $(date +%s) - started ))
  printf '  %3ss  queue: %2s waiting, %2s in flight (backing off)   delivered: %2s   dead letters: %2s\n' \
    "$elapsed" "$visible" "$hidden" "$delivered" "$dead"
  if [ "$visible" = 0 ] && [ "$hidden" = 0 ] && [ "$dead" -ge "$expected_dead" ]; then break; fi
  if [ "$elapsed" -ge "$SETTLE_LIMIT" ]; then
    echo "not settled after ${SETTLE_LIMIT}s; the function's log:"; tail -20 "$logs/watch.log"; exit 1
  fi
  sleep 2
done

step "summary"
stats=$("$PYTHON" -c "import urllib.request; print(urllib.request.urlopen('$dest/stats', timeout=5).read().decode())")
$retryq dlq list --dlq-url "$dlq_url" --json > "$logs/dlq.json"
"$PYTHON" - "$stats" "$logs/dlq.json" "$elapsed" <<'PY'
import collections, json, sys
stats = json.loads(sys.argv[1]); dead = json.load(open(sys.argv[2]))
reasons = collections.Counter(d["failureReason"] for d in dead)
print(f"  messages enqueued        40")
print(f"  delivered                {stats['delivered']}  ({stats['deliveredAfterRetry']} of them after a retry)")
print(f"  dead-lettered            {len(dead)}")
for reason, n in sorted(reasons.items()):
    print(f"    {reason:<22} {n}")
print(f"  requests to destination  {stats['requests']}  (at most {stats['maxInFlight']} at once)")
print(f"  settled in               {sys.argv[3]}s")
PY

step "retryq dlq list --dlq-url $dlq_url"
$retryq dlq list --dlq-url "$dlq_url"
echo
echo "Done; stopping everything the demo started."
