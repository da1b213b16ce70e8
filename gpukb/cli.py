"""The ``gpukb`` command line: ``gpukb info``, ``gpukb bench``, ``gpukb precompile``."""

from __future__ import annotations

import argparse
import os
import sys

# argparse prints this as it is: plain words, no reST markup (the module docstring has some).
DESCRIPTION = ("The gpukb command line: 'gpukb info' prints the version, config file, session "
               "state and backends; 'gpukb bench' times gpukb.rnn against the peers installed "
               "here, or with --model a saved Keras model against Keras itself; 'gpukb "
               "precompile' compiles the fused CPU kernels into Numba's disk cache before "
               "their first use. 'gpukb COMMAND --help' explains a command.")

PRECOMPILE_HELP = "compile the fused CPU kernels into Numba's disk cache before their first use"
PRECOMPILE_DESCRIPTION = (
    "Compile (or load, when the cache already holds them) the fused CPU kernels of the chosen "
    "cells and dtypes, forward and gradients, and write them to Numba's disk cache, so that a "
    "new process's first call does not compile them (about 10 s per cell and dtype). Numba "
    "keys the cache on the CPU and the installation path, and uses only a cache folder it can "
    "write to: run it where the kernels will run (a container image: on the CPU type that runs "
    "it, with the same NUMBA_CACHE_DIR, writable by the user who runs it).")


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _precompile(args, parser) -> int:
    from .precompile import precompile

    try:
        precompile(args.cells, args.dtypes, gradients=not args.no_gradients)
    except ValueError as err:
        parser.error(str(err))
    except RuntimeError as err:
        print(f"gpukb precompile: {err}", file=sys.stderr)
        return 1
    return 0


def _info(args) -> int:
    import gpukb
    from gpukb import _dispatch, _state

    print(f"gpukb {gpukb.__version__}")
    path = _state.config_file_in_use()
    if path is None:
        candidate = _state.config_path()
        why = "is not a readable file" if os.path.lexists(candidate) else "does not exist"
        path = f"none ({candidate} {why})"
    print(f"config file: {path}")
    print("session state:")
    for key, value, source in _state.settings_report():
        print(f"  {key:18s} {value!r:20s} (from {source})")
    print("backends:")
    records = _dispatch.backend_records()
    if not records:
        print("  none found (is gpukb installed? backends are registered as entry points)")
    for record in records:
        state = "available" if record.availability else f"unavailable: {record.availability.reason}"
        print(f"  {record.name:8s} {state}")
        print(f"  {'':8s} accepts {', '.join(record.backend.array_types) or 'nothing'}; "
              f"priority {record.backend.priority}; from {record.distribution} ({record.entry_point})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="gpukb", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"gpukb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="print the version, config file, session state and backends")
    info.set_defaults(handler=_info)
    from .bench import command as bench_command

    bench = commands.add_parser(
        "bench", help=bench_command.SUMMARY,
        description=bench_command.description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_command.add_arguments(bench)
    bench.set_defaults(handler=lambda args: bench_command.run(args, bench))
    from .precompile import CELLS, DTYPES

    pre = commands.add_parser("precompile", help=PRECOMPILE_HELP,
                              description=PRECOMPILE_DESCRIPTION)
    pre.add_argument("--cells", type=_list, default=None, metavar="LIST",
                     help=f"comma-separated cells (default: {','.join(CELLS)}; gru covers "
                          "reset_after True and False)")
    pre.add_argument("--dtypes", type=_list, default=None, metavar="LIST",
                     help=f"comma-separated dtypes (default: {','.join(DTYPES)})")
    pre.add_argument("--no-gradients", action="store_true",
                     help="only the forward kernels (gpukb.rnn), not rnn_vjp's and the pullback's")
    pre.set_defaults(handler=lambda args: _precompile(args, pre))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
