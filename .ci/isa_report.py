"""The vector instructions in each object of a build: fails if an object holds
instructions beyond what the CPUs it may run on have. Only the CPU kernels of
a level (setup.py's cpu_kernels/<LEVEL>/) may use that level's encodings (AVX2:
VEX; AVX512: VEX and EVEX); every other object must run on any x86-64 CPU
torch runs on, so it holds neither.

usage: isa_report.py BUILD_DIR
"""

import re
import subprocess
import sys
from pathlib import Path

ALLOWED = {"AVX512": {"VEX", "EVEX"}, "AVX2": {"VEX"}}
INSTRUCTION = re.compile(r"^\s*[0-9a-f]+:\t([0-9a-f ]+)\t(.*)$")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
# Prefixes that may stand before a VEX or EVEX instruction's first byte.
PREFIXES = {"66", "67", "f2", "f3", "2e", "3e", "26", "64", "65", "36", "f0"}


def encoding(hex_bytes):
    """VEX (c4, c5) or EVEX (62) for the first opcode byte, in 64-bit code,
    where those bytes mean nothing else; None for anything older."""
    for byte in hex_bytes.split():
        if byte not in PREFIXES:
            return {"c4": "VEX", "c5": "VEX", "62": "EVEX"}.get(byte)
    return None


def scan(obj):
    """Counts of VEX and EVEX instructions in obj, and the first of each with its function."""
    out = subprocess.run(["objdump", "-d", "-w", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    counts, first, function = {"VEX": 0, "EVEX": 0}, {}, "?"
    for line in out.splitlines():
        if m := FUNCTION.match(line):
            function = m[1]
        elif (m := INSTRUCTION.match(line)) and (kind := encoding(m[1])):
            counts[kind] += 1
            first.setdefault(kind, f"{function}: {m[2].strip()}")
    return counts, first


def main(build_dir):
    objects = sorted(Path(build_dir).rglob("*.o"))
    if not objects:
        sys.exit(f"isa_report: no objects under {build_dir}")
    failures = []
    print("| object | VEX (AVX, AVX2) | EVEX (AVX-512) |\n|---|---:|---:|")
    for obj in objects:
        parts = obj.relative_to(build_dir).parts
        level = parts[parts.index("cpu_kernels") + 1] if "cpu_kernels" in parts else None
        counts, first = scan(obj)
        print(f"| {obj.relative_to(build_dir)} | {counts['VEX']} | {counts['EVEX']} |")
        for kind, n in counts.items():
            if n and kind not in ALLOWED.get(level, set()):
                failures.append(f"{obj}: {n} {kind} instructions, first in {first[kind]}")
    if failures:
        sys.exit("isa_report: instructions beyond the object's level:\n" + "\n".join(failures))


if __name__ == "__main__":
    main(*sys.argv[1:])
