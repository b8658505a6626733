#!/usr/bin/env python3
"""Keeps the docs from drifting from the code: every flag of `gateway --help`
and `worker --help` is in the configuration reference (docs/operations.md) and
every flag that reference documents exists; every `make` target and script
the README shows exists. Run after `cargo build` (it reads target/debug)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "operations.md"


def fail(problems: list[str]) -> None:
    for problem in problems:
        print(f"check-docs: {problem}", file=sys.stderr)
    sys.exit(1)


def flags_of(binary: str) -> set[str]:
    path = ROOT / "target" / "debug" / binary
    if not path.exists():
        fail([f"build the {binary} binary first (cargo build): its --help lists the flags"])
    text = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", text, re.MULTILINE)) - {"--help", "--version"}


def main() -> None:
    problems = []
    reference = REFERENCE.read_text()
    documented = {
        flag
        for line in reference.splitlines()
        if line.startswith("| `--")
        for flag in re.findall(r"`(--[a-z0-9-]+)`", line.split("|")[1])
    }
    for binary in ("gateway", "worker"):
        for flag in sorted(flags_of(binary) - documented):
            problems.append(f"{binary} {flag} is missing from the configuration reference in {REFERENCE.name}")
    existing = flags_of("gateway") | flags_of("worker")
    for flag in sorted(documented - existing):
        problems.append(f"{REFERENCE.name} documents {flag}, which neither binary has")
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.MULTILINE))
    # Commands are what the README shows as code: fenced blocks and `inline` spans.
    fenced = re.findall(r"```.*?```", readme, re.DOTALL)
    prose = re.sub(r"```.*?```", "", readme, flags=re.DOTALL)
    code = "\n".join(fenced + re.findall(r"`[^`]+`", prose))
    for target in sorted(set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", code))):
        if target not in targets:
            problems.append(f"the README shows `make {target}`, which the Makefile lacks")
    for script in sorted(set(re.findall(r"\b(scripts/[A-Za-z0-9_./-]+)", code))):
        if not (ROOT / script.rstrip(".")).exists():
            problems.append(f"the README shows {script}, which does not exist")
    if problems:
        fail(problems)
    print(f"check-docs: {len(documented)} documented flags match the binaries; the README's make targets and scripts exist")


if __name__ == "__main__":
    main()
