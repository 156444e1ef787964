"""Side-by-side benchmarks of sophia_memory against the libraries a user would otherwise pick.

    python benchmarks/run.py            # full run (~2 minutes), writes results/latest.{json,md}
    python benchmarks/run.py --quick    # smoke test (seconds), writes results/quick.{json,md}
    python benchmarks/run.py --redis    # the Redis suites (needs a server: REDIS_URL), writes
                                        # results/redis_latest.{json,md}

Every suite runs in this one process and event loop, its contestants interleaved round by
round; see benchmarks/README.md for what each suite times and how to read the results.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from _harness import Settings, SuiteResult, measure
from _redis_suites import REDIS_SUITES
from _report import environment, load_average, render_suite_table, render_targets, write_results
from _suites import SUITES

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke-test run (few rounds, small counts)")
    parser.add_argument("--rounds", type=int, help="rounds per suite (default: 11, quick: 3)")
    parser.add_argument("--redis", action="store_true",
                        help="run the Redis suites instead (REDIS_URL, default "
                        "redis://127.0.0.1:6379/0)")
    parser.add_argument("--only", action="append", choices=sorted({*SUITES, *REDIS_SUITES}),
                        metavar="SUITE", help="run only this suite (repeatable): "
                        f"{', '.join(SUITES)}; with --redis: {', '.join(REDIS_SUITES)}")
    parser.add_argument("--output-dir", type=Path, default=RESULTS,
                        help="where to write the results (default: benchmarks/results)")
    parser.add_argument("--name", help="file stem of the results (default: latest, or quick "
                        "with --quick)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a target is missed")
    return parser.parse_args(argv)


def isolate_environment() -> dict[str, str]:
    """Drop SOPHIA_MEMORY_* variables so the run measures the embedded defaults it states."""
    ignored = {k: v for k, v in os.environ.items() if k.startswith("SOPHIA_MEMORY_")}
    for key in ignored:
        del os.environ[key]
    return {k: ("<set>" if "KEY" in k else v) for k, v in ignored.items()}


def busy_machine_warnings(env: dict[str, Any]) -> list[str]:
    """A note when other work competed for the CPUs (load average above half the cores)."""
    machine = env["machine"]
    cores = machine["cpus_usable"] or machine["cpu_count"] or 1
    notes = []
    for when in ("start", "end"):
        load = machine.get(f"load_average_at_{when}")
        # at the end, the run's own load is in the 1-minute figure: allow for it
        limit = cores * 0.5 + (1.0 if when == "end" else 0.0)
        if load is not None and load[0] > limit:
            notes.append(f"1-minute load average {load[0]} at the {when} of the run on "
                         f"{cores} CPUs: other work competed for the machine; absolute "
                         "times are inflated, ratios less so")
    return notes


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    settings = Settings.quick() if args.quick else Settings.full()
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit("--rounds must be at least 1")
        settings = dataclasses.replace(settings, rounds=args.rounds)
    ignored = isolate_environment()
    env = environment(settings, ignored)
    started = time.perf_counter()
    results: list[SuiteResult] = []
    for key, factory in (REDIS_SUITES if args.redis else SUITES).items():
        if args.only and key not in args.only:
            continue
        progress(f"{key}: setting up and calibrating")
        async with factory(settings) as suite:
            result = await measure(suite, settings, progress)
        results.append(result)
        print(f"\n{suite.title}  [{suite.key}: {suite.unit}]")
        print("\n".join(render_suite_table(result)))
    elapsed = time.perf_counter() - started
    env["machine"]["load_average_at_end"] = load_average()
    env["warnings"] = busy_machine_warnings(env)
    for warning in env["warnings"]:
        progress(f"warning: {warning}")
    targets = render_targets(results)
    if targets:
        print("\nTargets")
        print("\n".join(targets))
    print(f"\n{env['mode']} run, {settings.rounds} rounds, {elapsed:.0f} s; "
          f"python {env['python']['version']}, {env['machine']['cpu_model']} "
          f"x{env['machine']['cpu_count']}")
    if not args.no_write:
        stem = args.name or ("quick" if args.quick else "latest")
        if args.redis and not args.name:
            stem = f"redis_{stem}"
        paths = write_results(args.output_dir, stem, env, results, elapsed)
        print("wrote " + ", ".join(str(p) for p in paths))
    missed = [t for r in results for t in r.targets if not t.passed]
    return 1 if (missed and args.strict) else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
