"""The command line: parses arguments, calls the library, writes files. No numerics here.

Each subcommand lives in its own module with ``add_parser(subparsers)``; this module
assembles them and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")          # the CLI writes files; it never opens a window

from hessian_tools.cli import (classify, compare_optimizers, demo, gallery,  # noqa: E402
                               landscape, spectrum)
from hessian_tools.cli._common import MODEL_HELP, UserError, start_distributed  # noqa: E402
from hessian_tools.compile_cache import enable_compilation_cache  # noqa: E402

__all__ = ["main", "UserError", "EXIT_CODES"]

EXIT_CODES = spectrum.EXIT_CODES | {130: "interrupted (Ctrl-C): finished results are kept"}

_EPILOG = ("--model everywhere: " + MODEL_HELP + "\n\nExit codes: "
           + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + ".")


def parser() -> argparse.ArgumentParser:
    """The ``hessian-tools`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="hessian-tools", epilog=_EPILOG,
        description="Hessian spectra and saddle-point analysis for JAX models.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_parser(sub)
    spectrum.add_parsers(sub, argparse.ArgumentDefaultsHelpFormatter)
    classify.add_parser(sub)
    compare_optimizers.add_parser(sub)
    landscape.add_parsers(sub, argparse.ArgumentDefaultsHelpFormatter)
    gallery.add_parser(sub)
    return p


_NEGATIVE_VALUED = ("--grid", "--curvature-grid")
"""Options whose values start with a minus sign (``--grid -1:1:51``), which argparse would
otherwise read as another option."""


def _attach_values(argv: list[str]) -> list[str]:
    """``--grid -1:1:51`` as ``--grid=-1:1:51``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _NEGATIVE_VALUED and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(_attach_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        if not args.no_compile_cache:
            enable_compilation_cache()
        start_distributed(args.command)
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:               # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
