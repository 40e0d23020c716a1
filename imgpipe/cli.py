"""The ``imgpipe`` command line.

    imgpipe CONFIG INPUT...           plan and run (the nenucal form; also `imgpipe image`)
    imgpipe plan CONFIG INPUT...      plan only: write the jobs file
    imgpipe run JOBS_FILE             run a jobs file
    imgpipe inputs CONFIG PATTERN...  what obs_id patterns select (data handler)
    imgpipe --version | --help

Exit codes: 0 success, 1 some jobs failed, 2 a user error (nothing started,
nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ImgpipeError

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
    p.add_argument("--skip-missing", action="store_true",
                   help="plan the MSs that can be read and leave out (and list) those missing or unreadable, "
                   "instead of refusing the plan")
    p.add_argument("-c", "--combine", action="store_true",
                   help="image all MSs of a (spectral window, obs_id) in one WSClean call")
    p.add_argument("-o", "--combine_obs_ids", "--combine-obs-ids", dest="combine_obs_ids", action="store_true",
                   help="with --combine: one WSClean call per spectral window, across obs_ids")
    p.add_argument("--jobs-file", metavar="PATH",
                   help="where to write the jobs file (default: imgpipe-runs/<config>-<digest>/jobs.txt)")
    _add_worker_arguments(p)
    p.add_argument("--debug", action="store_true", default=None, help="print every planned command")


def _add_worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", metavar="HOSTS", help="override [worker] nodes, e.g. 'node[001-004]'")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="override [worker] max_concurrent")


def _add_force_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="make every job's images again, even those done, and replace images that another "
                   "command made under the same names (their files are removed first)")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    from .engines import DEFAULT, names

    p.add_argument("--engine", choices=names(), default=None,
                   help=f"what runs the jobs: GNU parallel over ssh ({DEFAULT}, the default), the generated "
                   "Makefile (make), or Slurm (slurm; the default when [worker] nodes = 'slurm')")
    p.add_argument("--dry-run", action="store_true", default=None,
                   help="print each job with its host and whether it is done; start nothing, write nothing")
    p.add_argument("--halt-after", type=int, metavar="N", default=None,
                   help="start no new job once N jobs have failed (0: never halt; default: [worker] "
                   "halt_after, else halt when the first jobs all fail the same way)")
    p.add_argument("--submit", action="store_true",
                   help="plan here, then run the run itself as a Slurm batch job (sbatch: RUN/batch.sh, its output in "
                   "RUN/batch.out) and end at once: the night goes on when you log out (needs the Slurm engine)")
    _add_force_argument(p)


def _add_run_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", metavar="RUN_DIR_OR_JOBS_FILE",
                   help="a run directory or its jobs file (default: the most recent run here)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgpipe",
        description="Image Measurement Sets with WSClean across the nodes of a cluster.",
        epilog="Run `imgpipe COMMAND --help` for the options of a command. "
        "Exit codes: 0 ok, 1 jobs failed, 2 user error, 3 jobs not done (status), 130 interrupted.",
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
    plan.add_argument("--dry-run", action="store_true", default=None,
                      help="print the plan (each job done or to run); write no jobs file")
    _add_force_argument(plan)

    image = sub.add_parser(
        "image",
        help="plan and run: the same as `imgpipe CONFIG INPUT...`",
        description="Plan the jobs and run them on the nodes. `imgpipe CONFIG INPUT...` is the same. "
        "Running the same command again runs only what is not done.",
    )
    _add_plan_arguments(image)
    _add_run_arguments(image)

    run = sub.add_parser(
        "run",
        help="run a jobs file made by `imgpipe plan`",
        description="Run the jobs of a jobs file on the nodes. Running it again runs only what is not done.",
    )
    run.add_argument("jobs_file", metavar="JOBS_FILE", help="a jobs file written by `imgpipe plan`")
    _add_worker_arguments(run)
    _add_run_arguments(run)

    status = sub.add_parser(
        "status",
        help="what finished, what failed and why, what runs (reads the run directory only)",
        description="Show each job's state (done, failed, running, stopped, not started), host, start, runtime "
        "(elapsed for running jobs), MS, images, why it failed (WSClean's own words) and its log, from the "
        "image records and the job log; contacts no node. With no argument, the run here with the latest "
        "activity (`imgpipe runs` lists them). Exit status: 0 every job done, 1 some job failed, "
        "3 some job is running, stopped or not started (none failed).",
    )
    _add_run_dir_argument(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON on stdout")
    status.add_argument("--all", action="store_true",
                        help=f"list every job (by default, past {DONE_LISTED} done jobs, or jobs not started, one "
                        "line says which they are)")
    status.add_argument("--state", type=_states, metavar="STATE[,STATE]",
                        help="only the jobs in these states: done, failed, running, stopped, not-started")
    status.add_argument("--host", help="only the jobs of this node")
    status.add_argument("--obs-id", metavar="GLOB", help="only the jobs of the obs_ids this glob matches")
    status.add_argument("--sw", metavar="GLOB", help="only the jobs of the spectral windows this glob matches")

    runs = sub.add_parser(
        "runs",
        help="list the runs here (imgpipe-runs/): config, inputs, last activity, how many jobs are done",
        description="List every run under ./imgpipe-runs (and the run directories or jobs files given), "
        "newest activity first: its directory, config, inputs, last activity, and how many of its jobs "
        "are done, failed, running and to run. Reads the run directories only.",
    )
    runs.add_argument("extra", nargs="*", metavar="RUN_DIR_OR_JOBS_FILE", help="more runs to list")
    runs.add_argument("--json", action="store_true", help="print the list as JSON on stdout")

    report = sub.add_parser(
        "report",
        help="write report.html: summary, per-node timeline, failures, image previews, in one file",
        description="Write report.html in the run directory and print its path: one file that holds everything "
        "it shows (summary, timeline of every attempt on every node, failures with WSClean's error and their log "
        "lines, image previews with peak, RMS and beam, the config and plan), so it can be mailed or copied "
        "alone; its links to logs and images work while it stays in the run directory. Previews need "
        "`pip install imgpipe[report]` (astropy, matplotlib).",
    )
    _add_run_dir_argument(report)

    inputs = sub.add_parser(
        "inputs",
        help="list the MSs that obs_id patterns select through the data handler",
        description="List, for each MS an obs_id pattern selects through [data_handler], its obs_id, "
        "spectral window, node, path, and whether it exists and is readable. Runs and writes nothing.",
    )
    inputs.add_argument("config", help="the TOML config file, with [data_handler]")
    inputs.add_argument("patterns", nargs="+", metavar="PATTERN", help="OBSPAT[,OBSPAT...][:SWPAT]")
    inputs.add_argument("--json", action="store_true", help="print the list as JSON on stdout")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    worker = {}
    if args.nodes is not None:
        worker["nodes"] = args.nodes
    if args.max_concurrent is not None:
        worker["max_concurrent"] = args.max_concurrent
    if getattr(args, "debug", None):
        worker["debug"] = True
    return {"worker": worker} if worker else {}


def _image_states(plan, force: bool) -> dict:
    """job id -> its image set; images of another command are a plan error unless ``force``."""
    from .errors import PlanErrors
    from .image_sets import FORCE_HINT, foreign_problems, image_sets

    sets = image_sets(plan.jobs)
    problems = foreign_problems(plan.jobs, sets)
    if problems and not force:
        raise PlanErrors(problems, hint=FORCE_HINT)
    return sets


def _say_skipped(skipped: list[str] | None) -> None:
    if skipped:
        print(f"imgpipe: warning: --skip-missing: {len(skipped)} MS(s) left out of the plan:", file=sys.stderr)
        for line in skipped:
            print(f"  - {line}", file=sys.stderr)


def _warn_combine_obs_ids_alone(args) -> None:
    if args.combine_obs_ids and not args.combine:  # (nenucal accepts it, and ignores it)
        print("imgpipe: warning: --combine_obs_ids (-o) only takes effect with --combine (-c): one job per MS",
              file=sys.stderr)


def _forced(plan, jobs_path, force: bool) -> frozenset:
    """The jobs --force makes again (RunDir.forced_jobs): a stopped forced run resumes, it does
    not start over."""
    from .run_dir import RunDir

    return RunDir(Path(jobs_path).parent).forced_jobs(plan, force)


def _job_state(image_set, force: bool) -> str:
    if image_set.state == "foreign":
        return "replaces"  # (only with --force: otherwise a plan error)
    if image_set.done and not force:
        return "done"
    return "to run"


def _totals(plan, sets, forced: frozenset) -> str:
    """'8 job(s): 6 done, 2 to run' (and how many replace images of another command)."""
    from collections import Counter

    c = Counter(_job_state(sets[j.id], j.id in forced) for j in plan.jobs)
    parts = [f"{c['done']} done", f"{c['to run'] + c['replaces']} to run"]
    if c["replaces"]:
        parts.append(f"{c['replaces']} of them replacing images of another command")
    return f"{len(plan.jobs)} job(s): " + ", ".join(parts)


def _fmt_cost(job, rates) -> str:
    from .image_sets import estimated_seconds

    seconds = estimated_seconds(job, rates)
    if seconds is None:
        return f"{job.cost:.3g}"  # relative units
    return "~" + _fmt_seconds(seconds)


def _fmt_seconds(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s}s" if s < 60 else (f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m")


def _print_summary(plan, jobs_path, sets, forced: frozenset, out, written: bool = True,
                   options_from: str | None = None) -> None:
    from .image_sets import estimated_seconds, seconds_per_cost

    n_ms = sum(len(j.ms) for j in plan.jobs)
    nodes = ",".join(plan.worker.nodes)
    rates = seconds_per_cost(plan.jobs, sets)
    print(
        f"imgpipe: planned {len(plan.jobs)} job(s) for {n_ms} MS(s) from {plan.config_path}\n"
        f"  nodes {nodes}, up to {plan.worker.max_concurrent} job(s) per node; the jobs start longest first",
        file=out,
    )
    _print_slurm_request(plan, out, options_from)
    print(f"  {'job':<6} {'host':<12} {'state':<8} {'chan':>5} {'cost':>7}  images (-name prefix) <- MS", file=out)
    for job in plan.jobs[:SUMMARY_ROWS]:
        ms = os.path.basename(job.ms[0]) + (f" (+{len(job.ms) - 1} more)" if len(job.ms) > 1 else "")
        chans = str(job.channels_out) if job.channels_out is not None else "-"
        state = _job_state(sets[job.id], job.id in forced)
        print(f"  {job.id:<6} {job.host or '*':<12} {state:<8} {chans:>5} {_fmt_cost(job, rates):>7}  {job.name} <- {ms}",
              file=out)
    if len(plan.jobs) > SUMMARY_ROWS:
        print(f"  ... and {len(plan.jobs) - SUMMARY_ROWS} more (all in the jobs file)", file=out)
    print(f"  {_totals(plan, sets, forced)}" + ("; nothing to do" if _nothing_left(plan, sets, forced) else ""),
          file=out)
    left = [estimated_seconds(j, rates) for j in plan.jobs if _job_state(sets[j.id], j.id in forced) != "done"]
    if left and None not in left:
        print(f"  estimated from the jobs done before: ~{_fmt_seconds(sum(left))} of work left, the longest job "
              f"~{_fmt_seconds(max(left))} (cost: seconds; otherwise relative units)", file=out)
    elif any(estimated_seconds(j, rates) is None for j in plan.jobs):
        print("  cost: relative units (the visibilities, passes and images of each job); seconds once jobs with "
              "these options have run", file=out)
    print(f"Jobs file: {jobs_path}" if written else f"Jobs file: not written (--dry-run): {jobs_path}", file=out)


def slurm_request(plan, options_from: str = "slurm_options (or $LIBPIPE_SLURM_OPTIONS)") -> list[tuple[str, str, str]]:
    """What each job asks of Slurm: (what, value, where the value comes from), the same for every
    job of the plan. The node's share is read from sinfo when Slurm answers here (else it is said
    how the run will work it out)."""
    import math
    import shlex
    import shutil

    from .engines.slurm import has_option, partition_of, read_nodes

    w = plan.worker
    options = shlex.split(w.slurm_options)
    partition = partition_of(options)
    share = None
    if not (w.slurm_cpus and w.slurm_mem_mb) and shutil.which("sinfo"):
        try:
            nodes, _ = read_nodes(partition, os.environ)
            usable = [n for n in nodes if n.usable] or nodes
            if usable:
                share = (min(n.cpus for n in usable), min(n.mem_mb for n in usable))
        except Exception:  # (Slurm not answering here: the run works the share out when it starts)
            share = None
    part = (partition or "the default partition",
            options_from if partition else "no --partition in slurm_options")

    def shared(index: int, unit: str, value: int) -> tuple[str, str]:
        if share is None:
            return "a node's share", f"the smallest usable node's {unit} / max_concurrent {w.max_concurrent}, " \
                                    "from sinfo when the run starts"
        return str(value), f"a node's share: the smallest usable node's {share[index]} {unit} / max_concurrent " \
                           f"{w.max_concurrent}"

    cpus = ((str(w.slurm_cpus), "[worker.resources.heavy] cpus") if w.slurm_cpus
            else shared(0, "CPUs", max(1, share[0] // w.max_concurrent) if share else 0))
    mem = ((f"{w.slurm_mem_mb} MB", "[worker.resources.heavy] mem") if w.slurm_mem_mb
           else shared(1, "MB", max(1, share[1] // w.max_concurrent) if share else 0))
    if mem[0].isdigit():
        mem = (f"{mem[0]} MB", mem[1])
    if has_option(options, "-t", "--time"):
        time_limit = (_time_option(options), options_from)
    elif w.slurm_nodes:
        time_limit = ("the allocation's (the partition's default)", "no --time in slurm_options; max_time is "
                      "kept by the wrapper")
    elif w.max_time:
        time_limit = (f"{math.ceil((w.max_time + 60) / 60)} min", f"max_time = {w.max_time:g} s, + 1 min for the "
                      "wrapper's own stop")
    else:
        time_limit = ("the partition's default", "no --time in slurm_options, max_time = 0")
    return [("CPUs", *cpus), ("memory", *mem), ("time", *time_limit), ("partition", *part)]


def _time_option(options: list[str]) -> str:
    """The value of the last -t/--time in sbatch-style options."""
    from .engines.slurm import time_words

    found = time_words(options)
    return found[-1][2] if found else "as slurm_options says"


def _print_slurm_request(plan, out, options_from: str | None = None) -> None:
    if plan.worker.nodes != ("slurm",):
        return
    mode = (f"one allocation of up to {plan.worker.slurm_nodes} node(s) a round, each job a step in it"
            if plan.worker.slurm_nodes else "each job a Slurm job of its own")
    print(f"  through Slurm ({mode}); each job asks for:", file=out)
    for what, value, source in slurm_request(plan, *([options_from] if options_from else [])):
        print(f"    {what:<10} {value:<22} {source}", file=out)


def _options_from(config) -> str:
    """Where [worker] slurm_options came from: the config file naming it, or the environment."""
    if ("worker", "slurm_options") in config.origins:
        return config.where("worker", "slurm_options")
    return "$LIBPIPE_SLURM_OPTIONS" if os.environ.get("LIBPIPE_SLURM_OPTIONS") else "slurm_options (not set)"


def _nothing_left(plan, sets, forced: frozenset) -> bool:
    return all(sets[j.id].done and j.id not in forced for j in plan.jobs)


def cmd_plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .plan import make_plan
    from . import jobs_file

    config = load_config(args.config, _overrides(args))
    skipped: list[str] | None = [] if args.skip_missing else None
    plan = make_plan(config, args.inputs, combine=args.combine, combine_obs_ids=args.combine_obs_ids,
                     skipped=skipped)
    _warn_combine_obs_ids_alone(args)  # (after: a plan it breaks says so in its own error)
    _say_skipped(skipped)
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
    sets = _image_states(plan, args.force)
    path = args.jobs_file or jobs_file.default_path(plan)
    if args.dry_run:  # (a file's path is still checked: a plan that could not be written is no plan)
        jobs_file.check_target(Path(path))
    else:
        path = jobs_file.write(plan, path)
    if args.json:
        doc = plan.as_dict()
        doc["jobs_file"] = os.path.abspath(path)
        forced = _forced(plan, path, args.force)
        for job in doc["jobs"]:
            job["state"] = _job_state(sets[job["id"]], job["id"] in forced)
        if plan.worker.nodes == ("slurm",):
            doc["slurm_request"] = {what: {"value": value, "from": source}
                                    for what, value, source in slurm_request(plan, _options_from(config))}
        _print_json(doc, "jobs")
    else:
        _print_summary(plan, path, sets, _forced(plan, path, args.force), sys.stdout, written=not args.dry_run,
                       options_from=_options_from(config))
    return 0


def _print_dry_run(plan, sets, forced: frozenset, options_from: str | None = None) -> None:
    _print_slurm_request(plan, sys.stderr, options_from)
    for job in plan.jobs:
        state = _job_state(sets[job.id], job.id in forced)
        mark = "" if state == "to run" else f", {state}"
        print(f"[{job.id} on {job.host or 'any node'}{mark}] {job.command}")
    left = "nothing to do; " if _nothing_left(plan, sets, forced) else ""
    print(f"imgpipe: dry run: {_totals(plan, sets, forced)}; {left}nothing was started or written", file=sys.stderr)


def _engine_name(plan, args) -> str:
    """--engine, else Slurm for nodes = 'slurm' (nenucal's spelling), else GNU parallel."""
    from .engines import DEFAULT
    from .errors import ImgpipeError

    slurm = plan.worker.nodes == ("slurm",)
    if args.engine is None:
        return "slurm" if slurm else DEFAULT
    if slurm and args.engine != "slurm":
        raise ImgpipeError(
            f"nodes = 'slurm' runs the jobs through Slurm; --engine {args.engine} needs the nodes by name",
            where=plan.config_path, hint="leave out --engine, or list the nodes in [worker] nodes")
    return args.engine


def _run_engine(plan, path, args) -> int:
    import time as _time

    from .engines.loop import run
    from .status import print_summary
    from .submit import batch_ended, batch_job, mark_killed, refuse_if_submitted

    engine = _engine_name(plan, args)
    job = batch_job()  # (the run's own batch job: imgpipe --submit)
    if job is None:
        refuse_if_submitted(Path(path))
    _collect_again()  # (the run's loop lasts the night)
    with _unfailing_output():
        _started = _time.time()
        if job is not None:
            print(f"imgpipe: the run's batch job, Slurm job {job} on {os.environ.get('SLURMD_NODENAME') or '?'}, "
                  f"started {_fmt_time(_started)}", file=sys.stderr)
        code = 130  # (unless it ends otherwise: an interruption)
        try:
            outcome = run(plan, Path(path), engine=engine, force=args.force, halt_after=args.halt_after)
            if job is not None and outcome.stopped:  # (scancel: the jobs srun killed said nothing)
                killed = mark_killed(plan, Path(path), _started, job)
                if killed:
                    print(f"imgpipe: {len(killed)} job(s) were killed by Slurm as the batch job was cancelled (no "
                          "clean-up on their node: their next attempt removes what they left)", file=sys.stderr)
            code = print_summary(plan, outcome)
            return code
        except ImgpipeError as e:
            code = e.exit_code
            raise
        finally:
            if job is not None:
                batch_ended(Path(path), job, code)


def _submit_engine(plan, args) -> None:
    """--submit needs the Slurm engine (nodes = 'slurm', or --engine slurm)."""
    if _engine_name(plan, args) != "slurm":
        raise ImgpipeError("--submit runs the run as a Slurm batch job, its jobs through Slurm: it needs the Slurm "
                           "engine, and these nodes are not Slurm's", where=plan.config_path,
                           hint="set [worker] nodes = 'slurm' (or give --engine slurm), or leave out --submit")


def _submit(plan, path, args, sets) -> int:
    """--submit: the plan is checked and something is left to do; the run goes to Slurm as a batch job."""
    from .submit import submit

    _submit_engine(plan, args)
    if _nothing_left(plan, sets, _forced(plan, path, args.force)):
        print(f"imgpipe: nothing to do: all {len(plan.jobs)} job(s) done, their images are there; nothing was "
              "submitted", file=sys.stderr)
        return 0
    run_args = [os.path.abspath(path), "--engine", "slurm"]
    if args.force:
        run_args.append("--force")
    if args.halt_after is not None:
        run_args += ["--halt-after", str(args.halt_after)]
    if args.command == "run":  # (for `imgpipe CONFIG ...` these are in the jobs file already)
        if args.nodes is not None:
            run_args += ["--nodes", args.nodes]
        if args.max_concurrent is not None:
            run_args += ["--max-concurrent", str(args.max_concurrent)]
    return submit(plan, Path(path), run_args=run_args)


class _Unfailing:
    """A stream whose writes never fail: once its terminal has hung up (EIO) or its pipe's reader
    is gone (EPIPE, `imgpipe ... | tee night.log` and Ctrl-C), what imgpipe says goes nowhere, and
    what it does goes on: stopping the engine and the jobs never depends on printing."""

    def __init__(self, stream) -> None:
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.gone = True

    def isatty(self) -> bool:
        try:
            return not self.gone and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _unfailing_output:
    """stdout and stderr as _Unfailing streams while a run goes on. A run goes on when its output
    is gone (the images, the job log, the logs and `imgpipe status` say what it did); a stream
    that went is pointed at /dev/null at the end, so that Python's own flush at exit cannot
    fail either (it would make the exit status 120)."""

    def __enter__(self):
        self.old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.new = _Unfailing(self.old[0]), _Unfailing(self.old[1])
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self.old
        for stream in self.new:
            if stream.gone:
                try:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.stream.fileno())
                except (OSError, ValueError):
                    pass


def cmd_image(args: argparse.Namespace) -> int:
    from .config import load_config
    from .plan import make_plan
    from . import jobs_file

    overrides = _overrides(args)
    if args.dry_run:
        overrides.setdefault("worker", {})["dry_run"] = True
    config = load_config(args.config, overrides)
    skipped: list[str] | None = [] if args.skip_missing else None
    plan = make_plan(config, args.inputs, combine=args.combine, combine_obs_ids=args.combine_obs_ids,
                     skipped=skipped)
    _warn_combine_obs_ids_alone(args)  # (after: a plan it breaks says so in its own error)
    _say_skipped(skipped)
    if config.worker.debug:
        for job in plan.jobs:
            print(f"[{job.id} @ {job.host or '*'}] {job.command}", file=sys.stderr)
    sets = _image_states(plan, args.force)
    if config.worker.dry_run:
        _print_dry_run(plan, sets, _forced(plan, args.jobs_file or jobs_file.default_path(plan), args.force),
                       _options_from(config))
        if args.submit:
            print("imgpipe: --dry-run: nothing was submitted", file=sys.stderr)
        return 0
    from .engines import load
    from .engines.loop import check_tools

    if args.submit:  # (Slurm's tools are needed where the batch job runs; sbatch here: submit checks it)
        _submit_engine(plan, args)
    else:
        check_tools(load(_engine_name(plan, args)))  # (before anything is written: exit 2 writes nothing)
    path = jobs_file.write(plan, args.jobs_file or jobs_file.default_path(plan))
    if args.submit:
        return _submit(plan, path, args, sets)
    n_ms = sum(len(j.ms) for j in plan.jobs)
    print(f"imgpipe: {len(plan.jobs)} job(s) for {n_ms} MS(s); jobs file {path}", file=sys.stderr)
    return _run_engine(plan, path, args)


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import jobs_file

    args.jobs_file = find_run(args.jobs_file)  # (a run directory, as status and report take, or its jobs.txt)
    plan = jobs_file.read(args.jobs_file)
    if args.nodes is not None or args.max_concurrent is not None:
        plan = replace(plan, worker=_run_overrides(plan, args))  # (the plan's digest, and so its jobs, stay)
    if args.dry_run:
        _print_dry_run(plan, _image_states(plan, args.force), _forced(plan, args.jobs_file, args.force))
        if args.submit:
            print("imgpipe: --dry-run: nothing was submitted", file=sys.stderr)
        return 0
    if args.submit:
        return _submit(plan, args.jobs_file, args, _image_states(plan, args.force))
    return _run_engine(plan, args.jobs_file, args)


def _run_overrides(plan, args):
    """--nodes / --max-concurrent of `imgpipe run`, checked as the config's would be."""
    from dataclasses import replace

    from .config import load_worker_overrides

    worker = load_worker_overrides(plan.worker, nodes=args.nodes, max_concurrent=args.max_concurrent)
    pinned = sorted({j.host for j in plan.jobs if j.host and j.host not in worker.nodes})
    if pinned and worker.nodes != ("slurm",):
        raise ImgpipeError(f"--nodes {args.nodes!r} leaves out the nodes some jobs are pinned to: "
                           f"{', '.join(pinned)}", hint="name them in --nodes too, or plan again")
    return replace(worker)


def cmd_inputs(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import ImgpipeError
    from .inputs import describe_inputs

    config = load_config(args.config)
    if config.data_handler is None:
        raise ImgpipeError(
            "`imgpipe inputs` needs a data handler: [data_handler] config_file is not set",
            where=str(config.path),
            hint="add [data_handler] with config_file = 'data_handler.toml' and data_level = 'L2'",
        )
    rows = describe_inputs(config.data_handler, args.patterns)
    if args.json:
        _print_json({"inputs": rows}, "inputs")
        return 1 if any(not r["readable"] for r in rows) else 0
    print(f"{'obs_id':<22} {'SW':<8} {'node':<12} {'state':<10} path")
    for r in rows:
        state = "ok" if r["readable"] else ("unreadable" if r["exists"] else "MISSING")
        print(f"{r['obs_id']:<22} {r['sw']:<8} {r['node'] or '-':<12} {state:<10} {r['path']}")
    missing = sum(1 for r in rows if not r["readable"])
    print(f"{len(rows)} MS(s) selected" + (f", {missing} missing or unreadable (plan the others with "
                                             "--skip-missing)" if missing else ""))
    return 1 if missing else 0


def find_run(arg: str | None) -> Path:
    """The jobs file of a run: the one given (directory or file), or the one here with the latest activity."""
    from .errors import ImgpipeError
    from .jobs_file import JOBS_FILE_NAME, RUNS_DIR

    if arg:
        path = Path(arg)
        if path.is_dir():
            path = path / JOBS_FILE_NAME
        if not path.is_file():
            raise ImgpipeError(f"no jobs file at {path}", hint="give a run directory (imgpipe-runs/...) or its jobs.txt")
        return path
    runs = local_runs()
    if not runs:
        raise ImgpipeError(f"no run found under ./{RUNS_DIR}",
                           hint="give the run directory printed by `imgpipe run`, or cd to where you ran imgpipe")
    return runs[0]


def local_runs() -> list[Path]:
    """The jobs files under ./imgpipe-runs, the latest activity first."""
    from .jobs_file import JOBS_FILE_NAME, RUNS_DIR
    from .status import last_activity

    return sorted(Path(RUNS_DIR).glob(f"*/{JOBS_FILE_NAME}"), key=last_activity, reverse=True)


def _print_json(doc: dict, many: str) -> None:
    """``doc`` as indented JSON on stdout, its list ``many`` last and one item a line: json's
    indented writer is pure Python (50,000 jobs took seconds), its compact one is not."""
    items = doc[many]
    head = json.dumps({**{k: v for k, v in doc.items() if k != many}, many: []}, indent=1, ensure_ascii=False)
    body = ",\n  ".join(json.dumps(item, ensure_ascii=False) for item in items)
    sys.stdout.write(head[: -len("[]\n}")] + (f"[\n  {body}\n ]\n}}\n" if items else "[]\n}\n"))


def _fmt_time(t: float | None, _minutes: dict = {}) -> str:
    """'MM-DD HH:MM:SS', local time (the minute worked out once: status prints 50,000 of them)."""
    import time as _time

    if not t:
        return "-"
    minute, second = divmod(int(t), 60)  # (every time zone is a whole number of minutes from UTC)
    if minute not in _minutes:
        _minutes[minute] = _time.strftime("%m-%d %H:%M", _time.localtime(minute * 60))
    return f"{_minutes[minute]}:{second:02d}"


def _fmt_runtime(r: float | None) -> str:
    if r is None:
        return "-"
    r = int(r)
    return f"{r // 3600}:{r % 3600 // 60:02d}:{r % 60:02d}"


def _short(path: str, _here: list = []) -> str:
    """A path relative to here when it is below here (shorter to read), else as it is."""
    if not _here:
        _here.append(os.path.join(os.getcwd(), ""))
    if path.startswith("/"):
        return path[len(_here[0]):] if path.startswith(_here[0]) else path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


DONE_LISTED = 100  # done (or not started) jobs listed one by one by `imgpipe status` (more: one line, unless --all)
STATES = ("done", "suspect", "failed", "running", "stopped", "not started")


def _states(text: str) -> tuple[str, ...]:
    """--state's value: states, comma-separated ('not-started' for 'not started')."""
    words = tuple(w.strip().replace("-", " ") for w in text.split(",") if w.strip())
    wrong = [w for w in words if w not in STATES]
    if wrong or not words:
        raise argparse.ArgumentTypeError(f"{text!r}: the states are " + ", ".join(s.replace(" ", "-") for s in STATES))
    return words


def _selected(r: dict, args) -> bool:
    """Does a status row pass --state, --host, --obs-id and --sw?"""
    from fnmatch import fnmatchcase

    return ((not args.state or r["state"] in args.state)
            and (not args.host or args.host in (r["host"], r["planned_host"]))
            and (not args.obs_id or fnmatchcase(r.get("obs_id") or "", args.obs_id))
            and (not args.sw or fnmatchcase(r.get("sw") or "", args.sw)))


COLOURS = {"failed": "31", "running": "34", "done": "32", "stopped": "33", "suspect": "35"}  # (ANSI: red, blue,
# green, yellow, magenta)


def _painter(stream):
    """text -> text coloured by a state, on a terminal only, and never with NO_COLOR set (no-color.org)
    or TERM=dumb: a pipe or a file gets the plain text."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError, OSError):
        tty = False
    if not tty or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return lambda state, text: text
    return lambda state, text: f"\033[{COLOURS[state]}m{text}\033[0m" if state in COLOURS else text


def cmd_status(args: argparse.Namespace) -> int:
    import time as _time

    from .status import counts, exit_status, failure_words, host_summary, id_ranges, status_rows
    from .status_memo import done_jobs
    from .submit import batch_now, batch_words

    path = find_run(args.run)
    batch = batch_now(path.parent)  # (a run submitted with --submit lives in a Slurm batch job)
    filtered = bool(args.state or args.host or args.obs_id or args.sw)
    digest, rows, done = status_rows(path, every_row=args.json or args.all or filtered)
    if done is not None and len(done.ids) <= DONE_LISTED:
        digest, rows, done = status_rows(path)  # (a memo gave the done jobs in brief: these are listed)
    c = counts([r["state"] for r in rows] + ["done"] * len(done.ids) if done else (r["state"] for r in rows))
    now = _time.time()
    for r in rows:
        if r["state"] == "failed":
            r["why"] = failure_words(r["why"], r["log"])
    shown = [r for r in rows if _selected(r, args)] if filtered else rows
    if args.json:
        rows = shown
        for r in rows:
            del r["label"]
            if r["state"] == "running" and r["start"]:
                r["elapsed"] = now - r["start"]
        _print_json({"run_dir": str(path.parent.resolve()), "jobs_file": str(path.resolve()), "digest": digest,
                     "batch": batch, "counts": c, "exit_status": exit_status(c), "hosts": host_summary(rows),
                     "jobs": rows}, "jobs")
        return exit_status(c)
    others = len(local_runs()) - 1 if not args.run else 0
    out = [f"run {path.parent.resolve()}" + (f": it lives in {batch_words(batch)}" if batch else "")
           + (f"   (the latest of {others + 1} runs here: `imgpipe runs` lists them)" if others > 0 else "")]
    order = {"failed": 0, "suspect": 1, "running": 2, "stopped": 3, "not started": 4, "done": 5}
    listed = shown
    if c["done"] > DONE_LISTED and not args.all and not filtered:  # the jobs that need a look, not 50,000 done
        listed = [r for r in rows if r["state"] != "done"]
        done = done or done_jobs(rows)
    waiting = [r["id"] for r in listed if r["state"] == "not started"]
    if len(waiting) > DONE_LISTED and not args.all and not args.state:  # (a night not run yet: one line)
        listed = [r for r in listed if r["state"] != "not started"]
    else:
        waiting = []
    slurm = any(r.get("slurm") for r in listed)  # a run through Slurm: its job (and step) ids too
    if listed:
        out.append(f"{'job':<6} {'host':<12} " + (f"{'slurm id':<10} " if slurm else "")
                   + f"{'state':<12} {'start':<15} {'runtime':>8}  {'MS':<22} {'images':<30} why")
    line = "%-6s %-12s " + ("%-10s " if slurm else "%s") + "%s %-15s %8s  %-22s %-30s %s"
    paint = _painter(sys.stdout)
    for r in sorted(listed, key=lambda r: (order[r["state"]], r["id"])):
        state, start = r["state"], r["start"]
        runtime = now - start if state == "running" and start else r["runtime"]  # running: elapsed
        why = r["why"] or ""
        if state == "failed":  # (an attempt that never reached its node has no log)
            why += f" (log {_short(r['log'])})" if r["log"] else " (no log)"
        out.append((line % (r["id"], r["host"] or r["planned_host"] or "-", (r["slurm"] or "-") if slurm else "",
                            paint(state, f"{state:<12}"), _fmt_time(start), _fmt_runtime(runtime), r["label"],
                            _short(r["name"]), why)).rstrip())
    if waiting:
        out.append(f"{len(waiting)} jobs not started: {id_ranges(waiting)} (`imgpipe status --all` lists each)")
    if done is not None:
        out.append(f"{c['done']} jobs done: {id_ranges(done.ids)} (`imgpipe status --all` lists each)")
        rows = [r for r in rows if r["state"] != "done"]  # (the done ones are in `done`)
    if filtered:
        out.append(f"shown: {len(shown)} of {c['total']} job(s) (--state, --host, --obs-id, --sw)")
    for host, h in sorted(host_summary(rows, done).items()):
        out.append(f"host {host:<12} {h['done']} done, {h['failed']} failed, busy {_fmt_runtime(h['busy'])}")
    out.append(f"total: {c['done'] + c['suspect']}/{c['total']} done"
               + (f" ({c['suspect']} suspect: their images failed a quality check)" if c["suspect"] else "")
               + f", {c['failed']} failed, {c['running']} running, "
               + (f"{c['stopped']} stopped, " if c["stopped"] else "") + f"{c['not started']} not started")
    print("\n".join(out))
    return exit_status(c)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters (the end shown as '...'), so that columns stay aligned."""
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_runs(args: argparse.Namespace) -> int:
    from .status import batch_states, run_overview
    from .submit import batch_words

    # (a directory `imgpipe plan` wrote and nothing ran from is a plan, not a run: said apart)
    here = [p.resolve() for p in local_runs()]
    planned = [p for p in here if not (p.parent / "run.json").exists()]
    paths = list(dict.fromkeys([p for p in here if p not in planned] + [find_run(a).resolve() for a in args.extra]))
    rows = [run_overview(p) for p in paths]
    rows.sort(key=lambda r: r["last_activity"] or 0, reverse=True)
    batch_states(rows)  # (the runs submitted with --submit: their Slurm jobs, from one squeue)
    if args.json:
        _print_json({"planned": [str(p.parent) for p in planned], "runs": rows}, "runs")
        return 0
    also = (f"{len(planned)} plan(s) here never run: " + ", ".join(_short(str(p.parent)) for p in planned)
            if planned else "")
    if not rows:
        print("no run here (imgpipe-runs/ is empty or missing)" + (f"; {also}" if also else ""))
        return 0
    # (the columns as wide as what they hold, up to a bound: long values are cut, never misalign)
    cw = min(max([len("config"), *(len(os.path.basename(r["config"])) for r in rows)]), 40)
    iw = min(max([len("inputs"), *(len(r["inputs"]) for r in rows)]), 60)
    print(f"{'last activity':<15} {'jobs':>5} {'done':>5} {'suspect':>7} {'failed':>6} {'running':>7} {'to run':>6}  "
          f"{'config':<{cw}} {'inputs':<{iw}} run")
    for r in rows:
        c = r["counts"]
        print(f"{_fmt_time(r['last_activity']):<15} {c['total']:>5} {c['done'] + c['suspect']:>5} {c['suspect']:>7} "
              f"{c['failed']:>6} {c['running']:>7} {c['not started'] + c.get('stopped', 0):>6}  "
              f"{_fit(os.path.basename(r['config']), cw):<{cw}} {_fit(r['inputs'], iw):<{iw}} "
              f"{_short(r['run_dir'])}" + (f"  {batch_words(r['batch'])}" if r["batch"] else ""))
    if also:
        print(also)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    _collect_again()  # (plotting makes reference cycles)
    print(write_report(find_run(args.run)))
    return 0


COMMANDS = {"plan": cmd_plan, "status": cmd_status, "runs": cmd_runs, "report": cmd_report, "image": cmd_image,
            "run": cmd_run, "inputs": cmd_inputs}


_VALUE_OPTIONS = {"--jobs-file", "--nodes", "--max-concurrent", "--engine"}


def _nenucal_form(argv: list[str]) -> bool:
    """True when the first word that is not an option (or an option's value) is not a command."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("-h", "--help", "--version"):
            return False
        if word.startswith("-"):
            i += 2 if word in _VALUE_OPTIONS else 1
            continue
        return word not in COMMANDS
    return False


# Python's cyclic garbage collector walks every tracked object each time enough new ones have
# been made: a plan or a status of 50,000 jobs, which builds hundreds of thousands of objects and
# no garbage cycle (reference counting frees what it drops), paid it over and over while building
# (~1.5 s of CPU for 50,000 jobs). So a command starts with it off; it is on again, with what was
# built until then left out of its walks, before what lasts or makes cycles: the run's loop and
# the report's plotting. ``main`` leaves it as it found it (the tests call main in-process).
def _collect_again() -> None:
    gc.freeze()
    gc.enable()


class Terminated(BaseException):
    """SIGTERM (``kill``, a batch system's time limit) or SIGHUP (the terminal closed) outside the
    run's loop, which has its own handling: the command stops as for Ctrl-C (the worker processes stopped, no temp file left,
    exit 130)."""


def _terminated(signum, frame):
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    collecting, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    old: dict = {}
    try:  # SIGTERM, and SIGHUP (the terminal closed): a stop like Ctrl-C (the run's loop has its own)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, _terminated)
    except ValueError:  # (not the main thread: no signal handler can be set there)
        pass
    try:
        return _main(argv)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if collecting:
            gc.enable()
        if not frozen:
            gc.unfreeze()


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _nenucal_form(argv):
        word = next(w for w in argv if not w.startswith("-"))
        if not os.path.exists(word) and not word.endswith(".toml"):  # a command mistyped, not a config
            import difflib

            close = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.7)
            if close:
                print(f"imgpipe: error: no command {word!r}: did you mean {close[0]!r}? (or a config file: "
                      f"{word} does not exist)", file=sys.stderr)
                return 2
        argv.insert(0, "image")  # the nenucal form: imgpipe [OPTIONS] CONFIG INPUT...
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    except (KeyboardInterrupt, Terminated):  # (Ctrl-C while the parser is built: no traceback)
        print("imgpipe: interrupted", file=sys.stderr)
        return 130
    if args.command is None:
        if extra:  # (imgpipe -V): say what was wrong, not just the help
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help(sys.stderr)
        return 2
    if extra:  # said with the command's own usage, not the top-level one
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except ImgpipeError as e:
        print(f"imgpipe: error: {e}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, Terminated):  # (the README's exit codes: 130 for both)
        print("imgpipe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgpipe status | head -1`: the reader has what it wanted
        return _quiet_broken_pipe()
    except OSError as e:  # the machine said no (disk full, permission, a file where a directory should be)
        where = f": {e.filename}" if e.filename else ""
        print(f"imgpipe: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _quiet_broken_pipe() -> int:
    """stdout's reader has gone: nothing more to say, and nothing for Python to say at exit either."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def console() -> int:
    """The ``imgpipe`` command: main(), with a closed stdout quiet even while exiting."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    except KeyboardInterrupt:  # (Ctrl-C before main's own handling is in place)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(console())
