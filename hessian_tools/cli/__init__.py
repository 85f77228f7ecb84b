"""The command line: parses arguments, calls the library, writes files. No numerics here.

Each subcommand lives in its own module with ``add_parser(subparsers)``; this module
assembles them and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")          # the CLI writes files; it never opens a window

from hessian_tools.cli import classify, compare_optimizers, demo, spectrum  # noqa: E402
from hessian_tools.cli._common import MODEL_HELP, UserError  # noqa: E402
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
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        if not args.no_compile_cache:
            enable_compilation_cache()
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
