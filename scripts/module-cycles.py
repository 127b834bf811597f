#!/usr/bin/env python3
"""Lists the crate's top-level modules, what each uses (`crate::x`), and any
cycle between them. Exit 1 on a cycle. Usage: scripts/module-cycles.py [--tree]"""
import os, re, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
uses = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), root)
        parts = rel[:-3].split(os.sep)
        if parts[0] in ("lib", "main", "bin"):
            continue
        module = parts[0]
        text = open(os.path.join(dirpath, f)).read()
        # Test modules may use anything.
        text = text.split("#[cfg(test)]")[0]
        # Comments (doc links included) are not dependencies.
        text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        deps = set(re.findall(r"crate::([a-z_]+)", text))
        # `use crate::{a, b::c}` groups.
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            deps |= set(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
        uses.setdefault(module, set()).update(d for d in deps if d != module)

modules = sorted(uses)
for m in modules:
    uses[m] = {d for d in uses[m] if d in uses}

cycles = []
def visit(node, path, on_path):
    for d in sorted(uses[node]):
        if d in on_path:
            cycle = path[path.index(d):] + [d]
            key = frozenset(cycle)
            if key not in {frozenset(c) for c in cycles}:
                cycles.append(cycle)
        elif len(path) < len(modules):
            visit(d, path + [d], on_path | {d})
for m in modules:
    visit(m, [m], {m})

if "--tree" in sys.argv:
    for m in modules:
        print(f"{m:10} -> {', '.join(sorted(uses[m])) or '(nothing)'}")
for c in cycles:
    print("cycle: " + " -> ".join(c))
if cycles:
    sys.exit(1)
print("no cycle between the crate's modules")
