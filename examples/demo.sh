#!/usr/bin/env bash
# demo.sh: the bundled imgpipe example, run for real on this machine.
#
#   bash examples/demo.sh            (from any directory)
#
# 1. makes 4 small Measurement Sets, examples/demo/data/SW01_T00{1..4}.MS
#    (16 channels, with CORRECTED_DATA, a different noise seed each), with
#    tests/msmaker.py (python-casacore only, no download);
# 2. images them with `imgpipe ../img.toml data/*.MS`, run from examples/demo/:
#    one WSClean job per MS, two at a time, on localhost, through GNU parallel;
# 3. lists the MFS images it wrote.
#
# Running it again recomputes nothing (the MSs are kept, and imgpipe skips the
# jobs that are done). Start over with: rm -rf examples/demo
#
# Which Python: $PYTHON if set, else the repository's .venv/bin/python (made by
# `bash .ci/setup`) if there is one, else the first python3 on PATH. It must have
# imgpipe installed (pip install -e .). wsclean and parallel must be on PATH.
set -euo pipefail

here=$PWD  # (the closing hints give paths from where the user is)
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
[[ ${PYTHON:-} == */* && ${PYTHON:-} != /* ]] && PYTHON=$PWD/$PYTHON  # relative to where we were
cd "$repo"

if [[ -n ${PYTHON:-} ]]; then
  python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  python=$repo/.venv/bin/python
else
  python=python3
fi

die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

command -v "$python" > /dev/null || die "no $python here (set PYTHON=/path/to/python, or run: bash .ci/setup)"
# (from / : the repository's own imgpipe/ next to the cwd must not count as installed)
(cd / && "$python" -c 'import imgpipe, casacore.tables') 2> /dev/null \
  || die "$python cannot import imgpipe (and python-casacore): run \`bash .ci/setup\`, or \`$python -m pip install -e .\`, or set PYTHON"
# the imgpipe command of that Python (its console script, else `python -m imgpipe.cli`)
scripts=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [[ -x $scripts/imgpipe ]]; then
  imgpipe=("$scripts/imgpipe")
  [[ $(command -v imgpipe || true) == "$scripts/imgpipe" ]] && shown=imgpipe || shown=$scripts/imgpipe
else
  imgpipe=("$python" -m imgpipe.cli)
  shown="$python -m imgpipe.cli"
fi
for tool in wsclean parallel; do
  command -v "$tool" > /dev/null || die "$tool is not on PATH (Debian: apt-get install wsclean parallel; or bash .ci/setup)"
done

demo=examples/demo
mkdir -p "$demo/data"

# 1. the Measurement Sets (each made under a temporary name, then renamed: an
#    interrupted run never leaves a half-made MS that a later run would take)
for i in 1 2 3 4; do
  ms=$demo/data/SW01_T00$i.MS
  [[ -d $ms ]] && continue
  rm -rf -- "$ms.part"
  "$python" tests/msmaker.py "$ms.part" --nchan 16 --corrected-data --seed "$i" > /dev/null
  mv -- "$ms.part" "$ms"
  echo "demo: made $ms"
done

# 2. plan + run (from examples/demo/, so the run directory imgpipe-runs/ and the
#    images/ of the config's relative out-dir land there too)
cd "$demo"
echo "demo: cd $demo && $shown ../img.toml data/*.MS"
status=0
"${imgpipe[@]}" ../img.toml data/*.MS || status=$?
if ((status != 0)); then
  echo "demo: imgpipe exited with status $status; what went wrong:" >&2
  "${imgpipe[@]}" status >&2 || true
  exit "$status"
fi

# 3. where the images are
mapfile -t mfs < <(find images -name '*-MFS-image.fits' | sort)
((${#mfs[@]} == 4)) || die "expected 4 MFS images under $demo/images, found ${#mfs[@]}"
shown_demo=$(realpath --relative-to="$here" -- "$repo/$demo" 2> /dev/null || echo "$repo/$demo")
q() { printf '%q' "$1"; }  # (a path with a space stays one word when pasted)
echo
echo "demo: done. The MFS images (one per MS; the per-channel images are next to them):"
for f in "${mfs[@]}"; do
  echo "  $(q "$shown_demo/$f")"
done
echo "demo: every file: ls $(q "$shown_demo")/images/*/     per job: cd $(q "$shown_demo") && $shown status"
echo "demo: the run on one page (timeline, failures, image previews): cd $(q "$shown_demo") && $shown report"
echo "demo: run it again and nothing is recomputed; start over with: rm -rf $(q "$shown_demo")"
