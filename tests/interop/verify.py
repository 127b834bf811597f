"""Checks a request retryq sent with implementations retryq did not write.

    verify.py webhook SECRET   < request.json   Standard Webhooks (PyPI standardwebhooks)
    verify.py sigv4 SERVICE REGION < request.json   AWS SigV4 (botocore's signer)
    verify.py s3 REGION < request.json   SigV4 for S3 (botocore's S3SigV4Auth)

request.json: {"method", "url" (as received), "headers": [[name, value], ...],
"body": base64}. Credentials for sigv4 come from AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.

Exit 0: the signature verifies, and the same check refuses the request with
its body changed (so the check can fail). Exit 1: it does not verify; the
reason is on stderr.
"""
import base64
import hashlib
import json
import os
import sys


def fail(reason):
    print(f"verify: {reason}", file=sys.stderr)
    sys.exit(1)


def webhook(secret, request):
    from standardwebhooks import Webhook, WebhookVerificationError

    headers = {name.lower(): value for name, value in request["headers"]}
    body = request["body"]
    wh = Webhook(secret)
    try:
        wh.verify(body, headers)
    except WebhookVerificationError as e:
        fail(f"standardwebhooks refused the signature: {e}")
    try:
        wh.verify(body + b" ", headers)
    except WebhookVerificationError:
        return {"webhook-id": headers["webhook-id"], "webhook-timestamp": headers["webhook-timestamp"]}
    fail("standardwebhooks accepted a changed body")


def sigv4_signature(service, region, request, body):
    from urllib.parse import urlsplit
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth_header = dict((n.lower(), v) for n, v in request["headers"])["authorization"]
    signed = auth_header.split("SignedHeaders=")[1].split(",")[0].split(";")
    headers = [(n, v) for n, v in request["headers"] if n.lower() in signed]
    url = urlsplit(request["url"])
    aws = AWSRequest(method=request["method"], url=request["url"], data=body, headers=dict(headers))
    creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                        os.environ.get("AWS_SESSION_TOKEN"))
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(creds, service, region)
    amz_date = dict((n.lower(), v) for n, v in headers)["x-amz-date"]
    aws.context["timestamp"] = amz_date
    canonical = signer.canonical_request(aws)
    string_to_sign = signer.string_to_sign(aws, canonical)
    return signer.signature(string_to_sign, aws), auth_header, url


def sigv4(service, region, request):
    body = request["body"]
    headers = dict((n.lower(), v) for n, v in request["headers"])
    if headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
        fail("x-amz-content-sha256 is not the SHA-256 of the body sent")
    expected, auth_header, _ = sigv4_signature(service, region, request, body)
    got = auth_header.split("Signature=")[1].strip()
    if got != expected:
        fail(f"botocore computes signature {expected}, the request carries {got}")
    # The same computation over a changed body gives another signature.
    changed = dict(request)
    changed["headers"] = [(n, hashlib.sha256(body + b" ").hexdigest() if n.lower() == "x-amz-content-sha256" else v)
                          for n, v in request["headers"]]
    other, _, _ = sigv4_signature(service, region, changed, body + b" ")
    if other == got:
        fail("botocore's signature did not change with the body")
    return {"signedHeaders": auth_header.split("SignedHeaders=")[1].split(",")[0]}


def main():
    request = json.load(sys.stdin)
    request["body"] = base64.b64decode(request["body"])
    kind = sys.argv[1]
    if kind == "webhook":
        print(json.dumps(webhook(sys.argv[2], request)))
    elif kind == "sigv4":
        print(json.dumps(sigv4(sys.argv[2], sys.argv[3], request)))
    elif kind == "s3":
        print(json.dumps(sigv4("s3", sys.argv[2], request)))
    else:
        fail(f"unknown check {kind}")


if __name__ == "__main__":
    main()
