"""Registers, shared memory and spills per CUDA kernel, from a build log made
with `-Xptxas -v`. Prints a markdown table, writes it to a file, and fails if a
kernel spills registers or a required architecture was not compiled.

usage: ptxas_report.py BUILD_LOG OUT.md ARCH...   (e.g. sm_80 sm_90)
"""

import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\w+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USAGE = re.compile(r"ptxas info\s*: Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")
SPILL_WARNING = re.compile(r"ptxas warning.*spill", re.IGNORECASE)


def parse(lines):
    """One dict per (kernel, arch), in the order ptxas compiled them."""
    kernels, current = [], None
    for line in lines:
        if m := ENTRY.search(line):
            current = dict(name=m[1], arch=m[2], stack=0, spill_stores=0, spill_loads=0)
            kernels.append(current)
        elif current and (m := FRAME.search(line)):
            current.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current and (m := USAGE.search(line)):
            smem = SMEM.search(line)
            current.update(registers=int(m[1]), smem=int(smem[1]) if smem else 0)
            current = None
    return kernels


def demangle(names):
    """Readable kernel names without parameter lists, when c++filt is there."""
    if not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return [re.sub(r"^void |\(.*\)$", "", n) for n in out.stdout.splitlines()]


def main(log_path, out_path, *archs):
    with open(log_path, errors="replace") as f:
        lines = f.readlines()
    kernels = parse(lines)
    for k, name in zip(kernels, demangle([k["name"] for k in kernels])):
        k["kernel"] = name
    kernels.sort(key=lambda k: (k["kernel"], k["arch"]))
    rows = [
        "| kernel | arch | registers | shared memory (B) | stack frame (B) | spill stores/loads (B) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    rows += [
        f"| `{k['kernel']}` | {k['arch']} | {k.get('registers', '?')} | {k.get('smem', '?')} "
        f"| {k['stack']} | {k['spill_stores']}/{k['spill_loads']} |"
        for k in kernels
    ]
    table = "\n".join(rows) + "\n"
    with open(out_path, "w") as f:
        f.write(table)
    print(table)

    errors = [f"{k['kernel']} ({k['arch']}) spills registers" for k in kernels
              if k["spill_stores"] or k["spill_loads"]]
    errors += [line.strip() for line in lines if SPILL_WARNING.search(line)]
    for arch in archs:
        compiled = {k["kernel"] for k in kernels if k["arch"] == arch}
        if not compiled:
            errors.append(f"no kernel was compiled for {arch}: no CUDA build, or no -Xptxas -v")
            continue
        missing = {k["kernel"] for k in kernels} - compiled
        errors += [f"{name} was not compiled for {arch}" for name in sorted(missing)]
    for error in errors:
        print(f"ptxas_report: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
