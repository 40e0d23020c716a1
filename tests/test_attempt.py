"""The contract between imgpipe and its node wrapper (imgpipe/attempt.py, bin/imgpipe-job): the
wrapper's arguments, its outcomes and exit statuses, and the one structured result it ends each
attempt with. The wrapper runs for real here, with real WSClean on a real MS."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import needs
from imgpipe import attempt
from imgpipe.attempt import (
    OUTCOMES, RESULT_MARK, WRAPPER_ARGS, outcome_of, parse_result, read_log, read_result, wrapper_args,
)
from test_image_sets import plan_of, wrapper

REPO = Path(__file__).resolve().parent.parent
WRAPPER_TEXT = (REPO / "bin" / "imgpipe-job").read_text()


# ---------------------------------------------------------------- the two copies agree

def test_the_wrapper_reads_its_arguments_in_the_contract_s_order():
    names = re.search(r"my \(([^)]*)\) = @ARGV;", WRAPPER_TEXT).group(1)
    assert [n.strip().lstrip("$").upper() for n in names.split(",")] == list(WRAPPER_ARGS)


def test_the_wrapper_s_outcomes_and_exit_statuses_are_the_contract_s():
    table = re.search(r"my %EXIT = \((.*?)\);", WRAPPER_TEXT, re.S).group(1)
    pairs = dict(re.findall(r"'?([\w-]+)'?\s*=>\s*(\d+)", table))
    wrapper_side = {name: int(code) for name, code in pairs.items()}
    ours = {o.name: o.exit for o in OUTCOMES.values() if o.exit is not None and o.name in wrapper_side}
    assert wrapper_side == ours
    # every outcome the wrapper ends an attempt with is one of the vocabulary
    said = set(re.findall(r"finish\('([\w-]+)'", WRAPPER_TEXT))
    assert said and said <= set(OUTCOMES), said - set(OUTCOMES)
    assert set(wrapper_side) <= said | {"already-done"}


def test_imgpipe_srun_s_exit_statuses_are_the_contract_s():
    """bin/imgpipe-srun (the Slurm engine's "ssh") says what srun's status does not with its own exit
    statuses: every one it can exit with, and every one its header names, is an outcome's."""
    text = (Path(__file__).parent.parent / "bin" / "imgpipe-srun").read_text()
    own = {int(n) for n in re.findall(r"\brc=(\d+)|\bexit (\d+)", text) for n in n if n}
    comments = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    header = {int(n) for n in re.findall(r"(?:^#|\s{2})\s*(\d\d) [A-Za-z]", comments, re.M)}
    ours = {o.exit: o.name for o in OUTCOMES.values() if o.exit in own}
    assert own == header == set(ours) == {16, 17, 18, 19}, (own, header)
    assert ours == {16: "node", 17: "memory", 18: "time-limit", 19: "slurm"}
    assert all(OUTCOMES[ours[n]].retry for n in own)  # (each is worth another attempt)


def test_wrapper_args_follow_the_contract(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("a.MS"))
    (job,) = plan.jobs
    args = wrapper_args(plan, job.id, job.command, share="1", force=False, run="vm:/r", attempt=2)
    assert dict(zip(WRAPPER_ARGS, args)) == {"TAG": plan.tag, "ID": job.id, "ATTEMPT": "2", "SLOTS": "2",
                                             "ENV_FILE": "", "MAX_TIME": "0", "SHARE": "1", "FORCE": "0",
                                             "RUN": "vm:/r", "COMMAND": job.command}
    # a by-hand script's: nobody counts the attempts
    assert wrapper_args(plan, job.id, job.command, share="1", force=False, run="vm:/r")[2] == "0"


# ---------------------------------------------------------------- reading a result

def test_a_result_is_read_only_from_its_own_line_and_format():
    good = RESULT_MARK + json.dumps({"format": 1, "job": "0001", "outcome": "done", "exit_status": 0,
                                     "images": [{"file": "/x/img-image.fits", "size": 72000}]})
    r = parse_result(good)
    assert r.outcome == "done" and r.images == (("/x/img-image.fits", 72000),) and not r.failed
    assert parse_result(good.replace('"format": 1', '"format": 99')) is None
    assert parse_result(good.replace('"done"', '"finished"')) is None  # not in the vocabulary
    assert parse_result(good[:-5]) is None  # cut
    assert parse_result("x" + good) is None


def test_the_last_result_of_a_log_counts_and_a_quoted_one_does_not(tmp_path):
    log = tmp_path / "0001"
    inner = RESULT_MARK + json.dumps({"format": 1, "job": "0001", "outcome": "done", "exit_status": 0})
    log.write_text("WSClean says: " + inner + "\n" + "Gridding...\n" * 5000, encoding="utf-8")
    assert read_result(log) is None  # a result inside another line is not one
    log.write_text(log.read_text() + inner.replace("done", "wsclean").replace('"exit_status": 0', '"exit_status": 10')
                   + "\n", encoding="utf-8")
    r = read_result(log, attempt=3)  # (a result without its attempt: a by-hand script's, or an older wrapper's)
    assert (r.outcome, r.exit_status, r.attempt, r.path) == ("wsclean", 10, 3, str(log))
    # the attempt the wrapper was told is the one that counts
    log.write_text(log.read_text() + inner.replace('"job"', '"attempt": 2, "job"') + "\n", encoding="utf-8")
    assert read_result(log, attempt=3).attempt == 2 and read_result(log).attempt == 2


def test_an_attempt_without_a_result_gets_its_story_from_its_exit_status_alone():
    assert outcome_of(255)[0] == "connection"
    assert outcome_of(16)[0] == "node" and outcome_of(19)[0] == "slurm"
    assert outcome_of(143) == ("stopped", OUTCOMES["stopped"].words + " (SIGTERM)")
    assert outcome_of(137)[0] == "signal" and "out of memory" in outcome_of(137)[1]
    assert outcome_of(0, signal=9)[0] == "signal"
    assert outcome_of(3) == ("wsclean", "exit status 3")


# ---------------------------------------------------------------- the real wrapper says it

def last_result(text: str):
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(RESULT_MARK), text[-2000:]
    return parse_result(lines[-1])


@needs("wsclean")
def test_a_made_set_ends_with_a_result_that_lists_its_images_and_their_sizes(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    code, text = wrapper(plan, job, tmp_path, attempt=1)
    r = last_result(text)
    assert code == 0 and r.outcome == "done" and r.exit_status == 0 and r.job == job.id and r.tag == plan.tag
    # the wrapper writes the schema's keys and no other; the list is all there
    doc = json.loads(text.strip().splitlines()[-1][len(RESULT_MARK):])
    assert set(doc) <= {f.name for f in dataclasses.fields(attempt.Result)} | {"format"}, doc
    assert {"job", "attempt", "run", "host", "start", "end", "outcome", "exit_status", "images"} <= set(doc), doc
    assert r.attempt == 1
    assert r.run == f"test:{tmp_path}" and r.pid and r.start <= r.end
    assert {f for f, _ in r.images} == {job.name + s for s in
                                        ("-dirty.fits", "-image.fits", "-model.fits", "-psf.fits", "-residual.fits")}
    assert all(size == os.path.getsize(f) for f, size in r.images)
    assert "imgpipe-start " in text.splitlines()[0]
    # run again: nothing to do, said as its own outcome
    code, text = wrapper(plan, job, tmp_path)
    assert code == 0 and last_result(text).outcome == "already-done"


@needs("wsclean")
def test_a_wsclean_failure_s_result_holds_wsclean_s_own_error_line(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"), extra="fits-mask = '/no/such/mask.fits'")
    (job,) = plan.jobs
    code, text = wrapper(plan, job, tmp_path, attempt=3)
    r = last_result(text)
    assert code == OUTCOMES["wsclean"].exit and r.outcome == "wsclean" and r.wsclean_status == 255
    assert r.attempt == 3 and '"attempt":3' in text.splitlines()[0]  # (in its start line too)
    assert r.wsclean_error and "mask.fits" in r.wsclean_error, text[-3000:]
    log = tmp_path / "0001"
    log.write_text(text, encoding="utf-8")
    facts = read_log(log)
    assert facts.wsclean_status == 255 and facts.wsclean_error == r.wsclean_error and facts.stopped is None
    assert attempt.job_error(log) == r.wsclean_error


@needs("wsclean")
def test_a_stopped_wrapper_says_stopped_and_which_signal(run_cli, tmp_path, ms_factory):
    import signal
    import time

    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"), size="1024 1024", niter=100000)
    (job,) = plan.jobs
    proc = wrapper(plan, job, tmp_path, wait=False)
    logs = sorted(tmp_path.glob("wrapper-*.log"))  # (its log: the newest)
    deadline = time.time() + 60
    while "start: " not in logs[-1].read_text() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    r = last_result(logs[-1].read_text())
    assert r.outcome == "stopped" and r.signal == "SIGTERM" and not r.failed, r


def test_an_attempt_number_that_is_not_one_is_refused_before_anything_runs(run_cli, tmp_path, ms_factory):
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    for bad in ("x", "-1", "1.5", ""):
        code, text = wrapper(plan, job, tmp_path, attempt=bad)
        r = last_result(text)
        assert code == OUTCOMES["setup"].exit and r.outcome == "setup" and "ATTEMPT must be a number" in r.message
        assert "start: " not in text  # (WSClean never started)
    assert not list(Path(job.name).parent.glob("*.fits"))


# (CFITSIO cannot write a file whose path holds '(' or '[': its extended file-name syntax)
@pytest.mark.parametrize("name", ["it's; rm -rf ~ &", "new\nline\ttab", "caf\u00e9 \u2014 \"quoted\" \\ back"])
def test_hostile_names_travel_in_the_result_as_data(run_cli, tmp_path, ms_factory, name):
    if not subprocess.run(["which", "wsclean"], capture_output=True).returncode == 0:
        pytest.skip("needs wsclean")
    out = tmp_path / name
    plan = plan_of(run_cli, tmp_path, ms_factory("obs.MS"))
    (job,) = plan.jobs
    from dataclasses import replace

    argv = list(job.argv)
    argv[argv.index("-name") + 1] = str(out / "img")
    job = replace(job, argv=tuple(argv), name=str(out / "img"))
    out.mkdir()
    code, text = wrapper(plan, job, tmp_path)
    r = last_result(text)
    assert code == 0 and r.outcome == "done", text[-2000:]
    assert all(f.startswith(str(out / "img")) and os.path.isfile(f) for f, _ in r.images)
