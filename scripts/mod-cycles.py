#!/usr/bin/env python3
"""Finds import circles between the files of one module folder (default: src/config).

Usage: scripts/mod-cycles.py [DIR]

A file uses a sibling when its code names it (`super::x`, `crate::<path>::x`, or, in mod.rs,
`x::` after `mod x;`). mod.rs counts as a file of its own: a sibling that names an item
defined in mod.rs uses it, and mod.rs uses a child when it calls into it; its `mod x;` and
`pub use x::…` lines (the module's facade) are not uses. Prints each circle (a strongly
connected set of files), or "no circles".
"""
import os
import re
import sys


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "src/config"
    crate_path = "::".join(["crate"] + folder.split("/")[1:])
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".rs"):
            files[name[:-3]] = open(path, encoding="utf-8").read()
        elif os.path.isfile(os.path.join(path, "mod.rs")):
            parts = []
            for root, _, names in os.walk(path):
                parts += [open(os.path.join(root, n), encoding="utf-8").read() for n in names if n.endswith(".rs")]
            files[name] = "\n".join(parts)
    children = set(files) - {"mod"}
    parent_items = set()
    if "mod" in files:
        parent_items = set(re.findall(r"\b(?:struct|enum|fn|const|type|trait|mod)\s+(\w+)\s*[^;]", strip(files["mod"])))
        parent_items -= children
    edges = {name: set() for name in files}
    for name, text in files.items():
        code = strip(text)
        if name == "mod":
            body = "\n".join(l for l in code.splitlines() if not re.match(r"\s*(pub(\([^)]*\))?\s+)?(mod|use)\b", l))
            for child in children:
                if re.search(rf"(?<![\w:])(self::)?{child}::", body):
                    edges[name].add(child)
            continue
        for prefix in ("super", re.escape(crate_path)):
            for m in re.finditer(rf"\b{prefix}::(\{{[^}}]*\}}|\w+)", code):
                for used in re.findall(r"\w+", m.group(1)):
                    if used in children and used != name:
                        edges[name].add(used)
                    elif used in parent_items:
                        edges[name].add("mod")
    # Tarjan's strongly connected components.
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    for name in sorted(edges):
        print(f"{name} -> {', '.join(sorted(edges[name])) or '-'}")
    print()
    for comp in out:
        print("circle: " + " <-> ".join(comp))
    if not out:
        print("no circles")


if __name__ == "__main__":
    main()
