"""Prints, as JSON, what tests/aws/template.rs checks in template.yaml.

The template is read with cfn-lint's own CloudFormation YAML decoder (the
short forms !Ref, !If, !GetAtt become their long forms), not with text
matching, so a rule moved or reworded is still found.

    python3 tests/interop/template_facts.py template.yaml [Name=Value ...]

With parameter values (the others take their defaults), the SQS events'
properties are also given as CloudFormation would deploy them
(`resolvedSqsEvents`): conditions evaluated, `Fn::If` chosen, and
`AWS::NoValue` left out.
"""
import json
import sys

from cfnlint.decode import decode


NO_VALUE = object()


def resolver(template, overrides):
    """Evaluates `Fn::If` and conditions for these parameter values."""
    params = {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}
    params.update(overrides)
    conditions = template.get("Conditions", {})

    def value(node):
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else params.get(arg, node)
            if key == "Condition":
                return condition(arg)
            if key == "Fn::Equals":
                return str(value(arg[0])) == str(value(arg[1]))
            if key == "Fn::Not":
                return not value(arg[0])
            if key == "Fn::Or":
                return any(value(a) for a in arg)
            if key == "Fn::And":
                return all(value(a) for a in arg)
            if key == "Fn::If":
                return value(arg[1] if condition(arg[0]) else arg[2])
            if key == "Fn::Join":
                return arg[0].join(str(value(v)) for v in value(arg[1]))
        if isinstance(node, dict):
            out = {k: value(v) for k, v in node.items()}
            return {k: v for k, v in out.items() if v is not NO_VALUE}
        if isinstance(node, list):
            return [v for v in (value(v) for v in node) if v is not NO_VALUE]
        return node

    def condition(name):
        return bool(value(conditions[name]))

    return value


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
    overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
    resolve = resolver(template, overrides)
    resolved = [dict(e, properties=resolve(e["properties"])) for e in sqs_events]
    json.dump({"sqsEvents": sqs_events, "resolvedSqsEvents": resolved, "queues": queues, "buckets": buckets,
               "environment": environment, "metadata": template.get("Metadata", {})},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
