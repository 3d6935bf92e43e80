#!/usr/bin/env python3
"""scripts/structure.py - the structure targets of docs/DESIGN.md, measured.

    scripts/structure.py [--json FILE]

Prints, for the tree it is run in:
  - the fields of struct mrb_bridge (src/bridge_int.h): target <= 25;
  - the lines of src/bridge_int.h: target about 200 (<= 250);
  - each source file in src/ over about 700 lines (<= 750);
  - the fields of mrb_bridge that more than one module reads or writes
    (b->field or b->field.x in files of different modules): target none
    but the shared ones (SHARED below: configuration, routes snapshot,
    wake-up, module pointers, lifecycle flags).
A module is a file's stem up to its first '_' (mqtt.c and mqtt_int.h are
one module; bridge*.c, main.c and the headers are the loop's). Exits 1 if
a target is missed, 0 if all are met. Standard library only.
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

MAX_FIELDS = 25
MAX_HEADER_LINES = 250
MAX_FILE_LINES = 750
# what every module may see: the bridge's own, by the list
SHARED = {"cfg", "routes", "routes_lock", "routes_gen", "wake_fd", "wake_pending",
          "stopping", "fatal", "ready", "reload", "reload_ctx"}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def bridge_fields(header):
    text = strip_comments(header)
    m = re.search(r"typedef struct mrb_bridge \{(.*?)\n\} mrb_bridge;", text, re.S)
    if not m:
        sys.exit("structure.py: struct mrb_bridge not found in src/bridge_int.h")
    fields = []
    for decl in m.group(1).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        # "int a, b" / "mrb_rconn rpub, rsub, rread" / "char x[300]" / "T *p"
        head, _, rest = decl.partition(",")
        names = [head.split()[-1]] + [r.strip() for r in rest.split(",") if rest]
        for n in names:
            n = re.sub(r"\[.*?\]", "", n).lstrip("*").strip()
            if n:
                fields.append(n)
    return fields


def module_of(name):
    stem = os.path.splitext(name)[0]
    stem = stem.split("_")[0]
    return "bridge" if stem in ("bridge", "main") else stem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the figures as JSON here")
    args = ap.parse_args()

    with open(os.path.join(SRC, "bridge_int.h")) as f:
        header = f.read()
    fields = bridge_fields(header)
    header_lines = header.count("\n")

    sizes = {}
    users = {fld: set() for fld in fields}
    for name in sorted(os.listdir(SRC)):
        if not name.endswith((".c", ".h")):
            continue
        with open(os.path.join(SRC, name)) as f:
            text = f.read()
        if name.endswith(".c"):
            sizes[name] = text.count("\n")
        if name == "bridge_int.h":
            continue
        code = strip_comments(text)
        for fld in set(re.findall(r"\bb->([A-Za-z_][A-Za-z0-9_]*)", code)):
            if fld in users:
                users[fld].add(module_of(name))
    big = {n: l for n, l in sizes.items() if l > MAX_FILE_LINES}
    crossing = {fld: sorted(mods) for fld, mods in users.items()
                if len(mods) > 1 and fld not in SHARED}

    print("struct mrb_bridge: %d fields (target <= %d)" % (len(fields), MAX_FIELDS))
    print("src/bridge_int.h: %d lines (target <= %d)" % (header_lines, MAX_HEADER_LINES))
    print("source files over %d lines: %d" % (MAX_FILE_LINES, len(big)))
    for n, l in sorted(big.items(), key=lambda x: -x[1]):
        print("  src/%s: %d" % (n, l))
    print("fields of mrb_bridge used by more than one module (besides the "
          "shared ones): %d" % len(crossing))
    for fld, mods in sorted(crossing.items()):
        print("  %s: %s" % (fld, ", ".join(mods)))
    missed = [what for what, bad in (
        ("fields", len(fields) > MAX_FIELDS),
        ("header", header_lines > MAX_HEADER_LINES),
        ("file sizes", bool(big)),
        ("module boundaries", bool(crossing))) if bad]
    print("targets missed: %s" % (", ".join(missed) if missed else "none"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"fields": len(fields), "header_lines": header_lines,
                       "big_files": big, "crossing_fields": crossing,
                       "missed": missed}, f, indent=1, sort_keys=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
