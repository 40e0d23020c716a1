"""The ``imgpipe`` command line.

    imgpipe CONFIG INPUT...           plan and run (the nenucal form)
    imgpipe plan CONFIG INPUT...      plan only: write the jobs file
    imgpipe --version | --help

Exit codes: 0 success, 1 some jobs failed, 2 a user error (nothing started,
nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import ImgpipeError

SUBCOMMANDS = ("plan",)
SUMMARY_ROWS = 20


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: exit 2, one line, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the TOML config file (nenucal img.toml format)")
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="MS paths, or obs_id patterns OBSPAT[,OBSPAT...][:SWPAT] when [data_handler] is configured",
    )
    p.add_argument("-c", "--combine", action="store_true",
                   help="image all MSs of a (spectral window, obs_id) in one WSClean call")
    p.add_argument("-o", "--combine_obs_ids", "--combine-obs-ids", dest="combine_obs_ids", action="store_true",
                   help="with --combine: one WSClean call per spectral window, across obs_ids")
    p.add_argument("--jobs-file", metavar="PATH",
                   help="where to write the jobs file (default: imgpipe-runs/<config>-<digest>/jobs.txt)")
    p.add_argument("--nodes", metavar="HOSTS", help="override [worker] nodes, e.g. 'node[001-004]'")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="override [worker] max_concurrent")
    p.add_argument("--debug", action="store_true", default=None, help="print every planned command")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgpipe",
        description="Image Measurement Sets with WSClean across the nodes of a cluster.",
        epilog="Run `imgpipe plan --help` for the options of planning. "
        "Exit codes: 0 ok, 1 jobs failed, 2 user error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"imgpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    plan = sub.add_parser(
        "plan",
        help="check the config and inputs and write the jobs file (runs nothing)",
        description="Expand a config and inputs into a checked jobs file: one fully-resolved, "
        "shell-quoted WSClean command line per job, tagged with its host. Runs nothing.",
    )
    _add_plan_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    plan.add_argument("--check", action="store_true",
                      help="also validate every distinct command with `wsclean -dry-run`")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    worker = {}
    if args.nodes is not None:
        worker["nodes"] = args.nodes
    if args.max_concurrent is not None:
        worker["max_concurrent"] = args.max_concurrent
    if args.debug:
        worker["debug"] = True
    return {"worker": worker} if worker else {}


def _print_summary(plan, jobs_path, out) -> None:
    n_ms = sum(len(j.ms) for j in plan.jobs)
    nodes = ",".join(plan.worker["nodes"])
    print(
        f"imgpipe: planned {len(plan.jobs)} job(s) for {n_ms} MS(s) from {plan.config_path}\n"
        f"  nodes {nodes}, up to {plan.worker['max_concurrent']} job(s) per node",
        file=out,
    )
    print(f"  {'job':<6} {'host':<12} {'chan':>5}  images (-name prefix) <- MS", file=out)
    for job in plan.jobs[:SUMMARY_ROWS]:
        ms = os.path.basename(job.ms[0]) + (f" (+{len(job.ms) - 1} more)" if len(job.ms) > 1 else "")
        chans = str(job.channels_out) if job.channels_out is not None else "-"
        print(f"  {job.id:<6} {job.host or '*':<12} {chans:>5}  {job.name} <- {ms}", file=out)
    if len(plan.jobs) > SUMMARY_ROWS:
        print(f"  ... and {len(plan.jobs) - SUMMARY_ROWS} more (all in the jobs file)", file=out)
    print(f"Jobs file: {jobs_path}", file=out)


def cmd_plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .plan import make_plan
    from . import jobs_file

    config = load_config(args.config, _overrides(args))
    plan = make_plan(config, args.inputs, combine=args.combine, combine_obs_ids=args.combine_obs_ids)
    if config.worker.debug:
        for job in plan.jobs:
            print(f"[{job.id} @ {job.host or '*'}] {job.command}", file=sys.stderr)
    if args.check:
        from .check import check_plan

        checked = check_plan(plan)
        if checked is None:
            print("imgpipe: warning: --check skipped: wsclean is not installed here", file=sys.stderr)
        else:
            print(f"imgpipe: wsclean -dry-run accepts all {checked} distinct command(s)", file=sys.stderr)
    path = args.jobs_file or jobs_file.default_path(plan)
    path = jobs_file.write(plan, path)
    if args.json:
        doc = plan.as_dict()
        doc["jobs_file"] = os.path.abspath(path)
        json.dump(doc, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_summary(plan, path, sys.stdout)
    return 0


COMMANDS = {"plan": cmd_plan}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except ImgpipeError as e:
        print(f"imgpipe: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("imgpipe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `imgpipe plan ... --json | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
