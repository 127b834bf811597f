#!/usr/bin/env python3
"""Prints an SQS event file as if its messages had just been sent.

The sample events in events/ carry fixed SentTimestamp and
ApproximateFirstReceiveTimestamp attributes. The processor schedules no retry
past the queue's retention counted from SentTimestamp (docs/spec.md), so a few
days after a sample was written its retryable records would be dead-lettered
`expired`, which is right for an old message and wrong for a demonstration.
`make invoke` sends the event through this script, which sets both
attributes to the current time (or to --age-seconds ago) and leaves the
rest unchanged.

    python3 scripts/fresh-event.py events/mixed-batch.json
    python3 scripts/fresh-event.py --age-seconds 2592000 events/server-error-503.json
"""
import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("event", help="an SQS event file, such as events/mixed-batch.json")
    parser.add_argument("--age-seconds", type=int, default=0,
                        help="how long ago the messages were sent (default 0: now)")
    args = parser.parse_args()
    with open(args.event, encoding="utf-8") as f:
        event = json.load(f)
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        print(f"{args.event}: not an SQS event (no Records list)", file=sys.stderr)
        return 2
    sent = int(time.time() * 1000) - args.age_seconds * 1000
    for record in records:
        attributes = record.setdefault("attributes", {})
        attributes["SentTimestamp"] = str(sent)
        attributes["ApproximateFirstReceiveTimestamp"] = str(sent)
    json.dump(event, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
