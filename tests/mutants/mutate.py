"""Mutation testing with mutmut, in a scratch copy of the repository (``make mutate``).

mutmut mutates the modules named below one small change at a time and runs the chosen tests
against each mutant; a mutant no test fails on *survives*. This script copies ``src/``,
``tests/`` and ``pyproject.toml`` to a scratch directory (mutmut writes its ``mutants/``
tree and cache where it runs: never in the working tree), writes mutmut's configuration
there, runs it, and prints the score and every survivor (``--report FILE`` also writes them
as Markdown).

    .venv/bin/python tests/mutants/mutate.py                      # the default scope
    .venv/bin/python tests/mutants/mutate.py --only 'src/sophia_memory/engine/ordering.py' \\
        --tests tests/test_planted_behaviours.py tests/test_engine_anomalies.py
    .venv/bin/python tests/mutants/mutate.py --workers 1 --only src/sophia_memory/codecs.py \\
        --tests tests/test_codecs.py tests/test_codecs_mutants.py tests/test_planted_behaviours.py

The default scope is issue 16's: the engine, the codecs, the eviction policies and the SQL
identifier checks, judged by the tests that exercise them. A full run takes hours on two
cores; ``--only`` narrows it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCOPE = ["src/sophia_memory/engine/*", "src/sophia_memory/codecs.py",
         "src/sophia_memory/policies/*", "src/sophia_memory/backends/sql/snowflake.py",
         "src/sophia_memory/backends/sql/sqlite.py"]
TESTS = ["tests/test_planted_behaviours.py", "tests/test_engine_anomalies.py",
         "tests/test_linearizable_memory.py", "tests/test_codecs.py",
         "tests/test_identifiers.py", "tests/test_state_machine.py", "tests/test_promotion.py",
         "tests/test_ttl_namespace.py", "tests/test_failures.py", "tests/test_concurrency.py"]


def setup_cfg(only: list[str], tests: list[str]) -> str:
    def lines(items: list[str]) -> str:
        return "".join(f"\n    {i}" for i in items)

    return ("[mutmut]\n"
            "source_paths = src\n"
            f"only_mutate ={lines(only)}\n"
            f"pytest_add_cli_args_test_selection ={lines(tests)}\n"
            "pytest_add_cli_args =\n    -p\n    no:randomly\n    -p\n    no:cacheprovider\n"
            # mutmut 3.8 reads item._nodeid, gone in pytest 9: this plugin restores it
            "    -p\n    tests.mutmut_pytest_compat\n"
            "use_git_change_detection = false\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=SCOPE, help="globs of files to mutate")
    parser.add_argument("--tests", nargs="+", default=TESTS, help="the tests that judge")
    parser.add_argument("-k", "--keyword", dest="keyword",
                        help="only the tests matching this pytest -k expression")
    parser.add_argument("--report", type=Path, help="write the score and survivors here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--workers", type=int,
                        help="mutants tested at once (mutmut's default: one per core)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sophia-mutate-"))
    try:
        for name in ("src", "tests"):
            shutil.copytree(ROOT / name, work / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "mutants"))
        shutil.copy2(ROOT / "pyproject.toml", work)
        # tests/mutants/ is not copied (no stray mutants/ tree): the plugin goes by itself
        shutil.copy2(ROOT / "tests/mutants/pytest_compat.py",
                     work / "tests/mutmut_pytest_compat.py")
        tests = [*args.tests, "-k", args.keyword] if args.keyword else args.tests
        (work / "setup.cfg").write_text(setup_cfg(args.only, tests))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        mutmut = [sys.executable, "-m", "mutmut"]
        workers = ["--max-children", str(args.workers)] if args.workers else []
        run = subprocess.run([*mutmut, "run", *workers], cwd=work, env=env, check=False)
        results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env,
                                 capture_output=True, text=True, check=False)
        counts: dict[str, int] = {}
        survivors: list[str] = []
        for line in results.stdout.splitlines():
            m = re.match(r"\s*(\S+): (\w[\w ]*)$", line)
            if not m:
                continue
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
            if m.group(2) == "survived":
                survivors.append(m.group(1))
        # A mutant that makes the tests hang (timeout) is detected too; one no test reaches
        # ("no tests") is left out of the score and listed by mutmut.
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        judged = killed + counts.get("survived", 0)
        score = f"{100 * killed / judged:.1f} %" if judged else "n/a"
        print(f"\nmutation score {score}: {killed} detected (killed or hung) of {judged} "
              f"judged; all: {counts}")
        for name in survivors:
            print(f"  survived: {name}")
        if args.report:
            diffs = []
            for name in survivors:
                show = subprocess.run([*mutmut, "show", name], cwd=work, env=env,
                                      capture_output=True, text=True, check=False)
                diffs.append(f"### {name}\n\n```diff\n{show.stdout.strip()}\n```\n")
            args.report.write_text(
                f"# Mutation run ({datetime.date.today()}, mutmut)\n\n"
                f"Mutated: {', '.join(args.only)}\n\nJudged by: {' '.join(args.tests)}"
                + (f" (`-k {args.keyword}`)" if args.keyword else "") + "\n\n"
                f"Score: **{score}** ({killed} detected, killed or hung, of {judged}; every "
                f"outcome: {counts})\n\n"
                "## Survivors\n\n" + ("\n".join(diffs) or "none\n"))
        return 0 if run.returncode == 0 else run.returncode
    finally:
        if args.keep:
            print(f"scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
