"""Prints, as JSON, what tests/aws/template.rs checks in template.yaml.

The template is read with cfn-lint's own CloudFormation YAML decoder (the
short forms !Ref, !If, !GetAtt become their long forms), not with text
matching, so a rule moved or reworded is still found.

    python3 tests/interop/template_facts.py template.yaml
"""
import json
import sys

from cfnlint.decode import decode


def main() -> int:
    template, problems = decode(sys.argv[1])
    if problems:
        print("\n".join(str(p) for p in problems), file=sys.stderr)
        return 1
    resources = template["Resources"]
    functions = {name: r for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    queues = {name: r.get("Properties", {}) for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    sqs_events = [
        {"function": name, "event": event_name, "properties": event.get("Properties", {})}
        for name, f in functions.items()
        for event_name, event in f.get("Properties", {}).get("Events", {}).items()
        if event.get("Type") == "SQS"
    ]
    environment = {
        name: f.get("Properties", {}).get("Environment", {}).get("Variables", {})
        for name, f in functions.items()
    }
    buckets = {name: r.get("Properties", {}) for name, r in resources.items() if r["Type"] == "AWS::S3::Bucket"}
    json.dump({"sqsEvents": sqs_events, "queues": queues, "buckets": buckets, "environment": environment},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
