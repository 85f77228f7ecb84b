"""The ``gallery`` subcommand: list the reproductions of classic results, or run one.

Examples::

    hessian-tools gallery                          # the entries, their papers and notebooks
    hessian-tools gallery keskar --out DIR         # run one (full configuration), write its report
    hessian-tools gallery keskar --small           # the small configuration the tests run

The report (``report.md``, ``report.json``) and the figures (``*.png``) are written into
``--out`` (default ``hessian_tools_out/gallery/NAME``); a folder that already holds a report
is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt

from hessian_tools import gallery
from hessian_tools.cli._common import UserError, add_output_flags, check_output_folder, speaker

__all__ = ["add_parser", "run_gallery"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gallery", help="the reproductions of classic results: list them, or run one and "
        "write its figures and report", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", metavar="NAME", help="the entry to run (omit to list "
                   "the entries)")
    p.add_argument("--small", action="store_true", help="the small configuration (the test "
                   "suite's; seconds), not the full one (the notebook's figures; minutes)")
    add_output_flags(p, out="", overwrite=True)
    p.set_defaults(func=run_gallery)
    return p


def _listing() -> list[dict]:
    return [{"name": e.name, "title": e.title, "citation": e.citation,
             "notebook": f"notebooks/{e.notebook}", "full_seconds": e.full_seconds}
            for e in gallery.ENTRIES]


def run_gallery(args) -> int:
    say = speaker(args)
    if args.name is None:
        listing = _listing()
        if args.json:
            print(json.dumps(listing, indent=2))
            return 0
        say("The reproduction gallery (run one: hessian-tools gallery NAME --out DIR):\n")
        for e in listing:
            seconds = e["full_seconds"]
            took = ("not timed" if seconds is None else f"~{seconds:.0f} s" if seconds < 90
                    else f"~{seconds / 60:.0f} min")
            say(f"  {e['name']:<12} {e['title']}\n  {'':<12} {e['citation']}\n"
                f"  {'':<12} {e['notebook']}; full configuration {took} on a 2-core CPU\n")
        return 0
    try:
        entry = gallery.get(args.name)
    except ValueError as err:
        raise UserError(str(err)) from None
    out = Path(args.out or f"hessian_tools_out/gallery/{entry.name}")
    if (out / "report.json").exists() and not args.overwrite:
        raise UserError(f"{out} already holds a gallery report; it was kept. Choose another "
                        "--out, or pass --overwrite.")
    out = check_output_folder(out)
    config = "small" if args.small else "full"
    say(f"{entry.title} ({entry.citation})\n{config} configuration, seed {args.seed}"
        + ("" if args.small or entry.full_seconds is None
           else f"; about {entry.full_seconds / 60:.0f} min on a 2-core CPU"))
    start = time.perf_counter()
    report = entry.run(small=args.small, seed=args.seed, say=say)
    paths = report.write(out, overwrite=True)
    for fig in report.figures.values():
        plt.close(fig)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        say("")
        say(report.to_markdown().split("\n![")[0].rstrip())
        say(f"\nwrote {len(paths)} files to {out}/ in {time.perf_counter() - start:.0f} s")
    sys.stdout.flush()
    return 0
