"""Judge some mutants again, in the scratch tree a ``mutate.py --keep`` run left behind.

mutmut's verdict on a mutant is the outcome of the tests it chose for it. This script runs
the tests you name against each mutant you name (mutmut's own switch: the environment
variable ``MUTANT_UNDER_TEST`` in the scratch ``mutants/`` tree) and prints, per mutant,
``killed`` (the tests failed), ``survived`` (they passed) or ``hung`` (still running after
``--timeout`` seconds). Uses: confirm that new tests kill the survivors of a run without a
whole new run, and confirm that a "timeout" verdict was a real hang and not a busy machine.
Test files are copied from the working tree into the scratch tree first, so tests written
after the run are used.

    .venv/bin/python tests/mutants/recheck.py --scratch /tmp/sophia-mutate-XXXX \\
        --tests tests/test_engine_mutants_spill.py --names-from survivors.txt

Without any mutant named, every survivor of the run is judged. Exit status 0 when every
mutant judged was killed or hung.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def survivors(scratch: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=scratch,
                         capture_output=True, text=True, check=False).stdout
    return [line.split(":")[0].strip() for line in out.splitlines()
            if line.strip().endswith(": survived")]


def judge(scratch: Path, name: str, tests: list[str], timeout: float) -> str:
    env = dict(os.environ, MUTANT_UNDER_TEST=name, PYTHONPATH="src",
               PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
           "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=scratch / "mutants", env=env, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "hung"
    if proc.returncode == 0:
        return "survived"
    if proc.returncode == 1:
        return "killed"
    return f"error (pytest exit {proc.returncode})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True,
                        help="the scratch directory a mutate.py --keep run printed")
    parser.add_argument("--tests", nargs="+", required=True, help="test files or node ids")
    parser.add_argument("--names-from", type=Path, help="a file of mutant names, one a line")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("names", nargs="*", help="mutant names (default: every survivor)")
    args = parser.parse_args()
    names = list(args.names)
    if args.names_from:
        names += [n.strip() for n in args.names_from.read_text().splitlines() if n.strip()]
    names = names or survivors(args.scratch)
    for test in args.tests:
        path = test.split("::")[0]
        shutil.copy2(ROOT / path, args.scratch / "mutants" / path)
    # Unmutated first: the tests must pass, or no verdict means anything.
    base = judge(args.scratch, "", args.tests, args.timeout)
    if base != "survived":
        print(f"the tests do not pass on the unmutated code ({base}): fix that first")
        return 2
    undetected = 0
    for name in names:
        verdict = judge(args.scratch, name, args.tests, args.timeout)
        undetected += verdict not in ("killed", "hung")
        print(f"{verdict:9} {name}", flush=True)
    print(f"\n{len(names) - undetected} of {len(names)} detected")
    return 0 if not undetected else 1


if __name__ == "__main__":
    raise SystemExit(main())
