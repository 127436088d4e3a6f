"""Replay pytest-xdist's ``--dist loadfile`` scheduling on a run's measured test times.

    scripts/test.sh -q --junitxml=/tmp/run.xml
    .venv/bin/python scripts/suite_schedule.py /tmp/run.xml

Prints the wall time three workers would take with xdist's default file order (files with the
most tests first, ``--loadscope-reorder``) and with the order scripts/test.sh uses
(``--no-loadscope-reorder``: tests/conftest.py's ``LONG_FILES`` first, then alphabetical), plus
the ideal (all test time / workers) and the longest file. Times come from the JUnit XML (setup +
call + teardown of each test), so the comparison holds the machine's load fixed: it compares
schedules, not runs. The model follows xdist 3.x ``LoadScopeScheduling``: each worker starts
with two files and gets the next file when it has two or fewer tests left.
"""

import argparse
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def file_times(junit_path):
    """``{test file name: [seconds of each test, in run order]}`` from a JUnit XML report."""
    files = {}
    for case in ET.parse(junit_path).iter("testcase"):
        name = case.get("classname").split(".")[-1] + ".py"
        files.setdefault(name, []).append(float(case.get("time") or 0))
    return files


def makespan(order, files, workers=3):
    """Seconds until the last of ``workers`` finishes ``files`` handed out in ``order``."""
    queue = [list(files[name]) for name in order]
    pending = [[] for _ in range(workers)]
    clock = [0.0] * workers

    def assign(i):
        if queue:
            pending[i].extend(queue.pop(0))

    for i in range(workers):
        assign(i)
    for i in range(workers):
        if len(pending[i]) <= 2:
            assign(i)
    while any(pending):
        end, i = min((clock[i] + pending[i][0], i) for i in range(workers) if pending[i])
        clock[i] = end
        pending[i].pop(0)
        if len(pending[i]) <= 2:
            assign(i)
    return max(clock)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit")
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)
    from conftest import LONG_FILES

    files = file_times(args.junit)
    alphabetical = sorted(files)
    by_count = sorted(alphabetical, key=lambda name: -len(files[name]))
    long_first = [n for n in LONG_FILES if n in files] + [n for n in alphabetical if n not in LONG_FILES]
    total = sum(map(sum, files.values()))
    print(f"xdist default order (most tests first): {makespan(by_count, files, args.workers):6.0f} s")
    print(f"scripts/test.sh order (LONG_FILES first): {makespan(long_first, files, args.workers):6.0f} s")
    print(f"ideal (all test time / {args.workers}):          {total / args.workers:6.0f} s")
    longest = max(files, key=lambda n: sum(files[n]))
    print(f"longest file: {longest} {sum(files[longest]):.0f} s")


if __name__ == "__main__":
    main()
