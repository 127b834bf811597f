"""The Amazon SQS Extended Client (PyPI amazon-sqs-extended-client) on the
local server, for retryq's claim-check tests.

    extended_client.py send QUEUE_URL BUCKET < body     sends body through S3; prints the SQS body sent
    extended_client.py read QUEUE_URL BUCKET            receives one message (within 20 s), makes it
                                                        visible again, and prints
                                                        {"body": the payload read back, "attributes": {...}}

Endpoints and credentials come from the environment (AWS_ENDPOINT_URL_SQS,
AWS_ENDPOINT_URL_S3, AWS_REGION, ...), as scripts/with-moto.sh sets them.
"""
import json
import os
import sys
import time

# botocore reads the region from AWS_DEFAULT_REGION.
os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))

import boto3
from sqs_extended_client import SQSExtendedClientSession


def client(bucket):
    s3 = boto3.client("s3")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    sqs = SQSExtendedClientSession().client("sqs")
    sqs.large_payload_support = bucket
    sqs.always_through_s3 = True
    return sqs


def main():
    command, queue_url, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
    sqs = client(bucket)
    if command == "send":
        body = sys.stdin.read()
        response = sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        print(json.dumps({"messageId": response["MessageId"]}))
    elif command == "read":
        deadline = time.time() + 20
        while time.time() < deadline:
            got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1,
                                      MessageAttributeNames=["All"], WaitTimeSeconds=1)
            for m in got.get("Messages", []):
                attributes = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
                # Visible again at once, for whoever reads it next.
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"],
                                              VisibilityTimeout=0)
                print(json.dumps({"body": m["Body"], "attributes": attributes}))
                return
        sys.exit("extended_client.py: no message within 20 s")
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
