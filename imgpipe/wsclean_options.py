"""The one place that knows WSClean 3.1's command-line options.

The table below lists every option printed by ``wsclean --help`` of WSClean
3.1.0 (2022-04-01), in the order of that help text, one option per line.
Options the help lists together (``-reorder``/``-no-reorder``,
``-verbose (or -v)``, ``-no-small-inversion and -small-inversion``,
``-iuwt-snr-test / -no-iuwt-snr-test``, ...) each get their own line.

Columns (whitespace separated; the help text is the rest of the line):

name
    The option without its leading ``-``.
nargs
    How many argv words follow the option: ``0`` (a flag), ``N`` (exactly N)
    or ``MIN-MAX`` (``weight``: ``uniform`` vs ``briggs 0.5``).
kind
    ``flag``   no value;
    ``number`` each word is a plain number (WSClean parses it as an integer
               or a double and rejects units, e.g. ``-niter 1000``);
    ``string`` anything else: keywords, angles or flux densities with units
               (``-scale 1amin``, ``-threshold 1mJy``), coordinates, mixed words;
    ``path``   a file, directory or image-name prefix: never split, even when
               it contains spaces;
    ``list``   ONE comma-separated word (``-pol xx,yy``, ``-spws 0,1``).
    For options taking several words, ``kind`` describes the words together;
    see ``nargs``.  A value with ``max nargs == 1`` is always one argv word.
value
    What each word must be, checked when planning (``check_words``), so that a
    value WSClean would refuse (or take and fail on later) is a plan error;
    several words: one spec each, joined by ``,``. ``-`` none (a flag);
    ``int``, ``int>=0``, ``int>=1``, ``real``, ``real>0``, ``real>=0``,
    ``real>=1`` (finite numbers, as WSClean reads them: no units, no leading
    ``+``); ``angle`` (a number, then deg, degrees, rad, amin, arcmin, asec,
    arcsec, mas, masec, ' or ''); ``flux`` (a number, then Jy, mJy, µJy, nJy or
    KJy); ``weight`` (natural, uniform, or briggs and a number); ``enum:a|b``
    (``enum~:`` ignores case); ``pol``; ``field`` (ids, or all); ``list:SPEC``
    (comma-separated); ``ra``, ``dec`` (sexagesimal, as -shift wants);
    ``text``, ``path`` (anything).
help
    One line from ``wsclean --help`` (the first line of the description,
    sometimes shortened).

Arity and kinds were checked against the real binary with ``wsclean
-dry-run`` (tests/test_wsclean_options.py keeps checking them): an option
given exactly ``nargs`` words is followed by a parsed option, one word fewer
makes it swallow the next option.  Options that take a value although the
help shows no ``<placeholder>``: beam-model, beam-mode,
beam-normalisation-mode, local-rms-window, local-rms-method,
multiscale-scale-bias.  ``number`` options were checked to reject units
(``1amin``); ``threshold`` accepts flux units (``1mJy``) and scale,
taper-gaussian, horizon-mask, beam-size and beam-shape accept angle units,
hence ``string``.  Listed by the help but refused by the binary: see
``REJECTED``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

WSCLEAN_VERSION = "3.1"

KINDS = ("flag", "number", "string", "path", "list")


@dataclass(frozen=True)
class WscleanOption:
    name: str  # without the leading '-', e.g. 'size', 'temp-dir'
    kind: str  # one of KINDS
    nargs: tuple[int, int]  # (min, max) argv words after the option
    help: str  # one line, from `wsclean --help`
    value: str = "text"  # what each word must be (see the module docstring)

    @property
    def flag(self) -> str:
        """The option as written on the command line, e.g. '-size'."""
        return "-" + self.name


# name                          nargs kind    value                  help
_TABLE = """
# ** GENERAL OPTIONS **
version                         0    flag    -                      Print WSClean's version and exit.
j                               1    number  int>=1                 Specify number of computing threads to use, i.e., number of cpu cores that will be used.
parallel-gridding               1    number  int>=1                 Will execute multiple gridders simultaneously.
parallel-reordering             1    number  int>=1                 Process the reordering with multipliple threads.
no-work-on-master               0    flag    -                      In MPI runs, do not use the master for gridding.
mem                             1    number  real>0                 Limit memory usage to the given fraction of the total system memory.
abs-mem                         1    number  real>0                 Like -mem, but this specifies a fixed amount of memory in gigabytes.
verbose                         0    flag    -                      Increase verbosity of output.
v                               0    flag    -                      Increase verbosity of output (same as -verbose).
log-time                        0    flag    -                      Add date and time to each line in the output.
quiet                           0    flag    -                      Do not output anything but errors.
reorder                         0    flag    -                      Force reordering of Measurement Set.
no-reorder                      0    flag    -                      Disable reordering of Measurement Set.
temp-dir                        1    path    path                   Set the temporary directory used when reordering files.
update-model-required           0    flag    -                      The model data column is required to contain valid model data after imaging (default).
no-update-model-required        0    flag    -                      The model data column is not required to contain valid model data after imaging.
no-dirty                        0    flag    -                      Do not save the dirty image.
save-first-residual             0    flag    -                      Save the residual after the first iteration.
save-weights                    0    flag    -                      Save the gridded weights in the a fits file named <image-prefix>-weights.fits.
save-uv                         0    flag    -                      Save the gridded uv plane, i.e., the FFT of the residual image.
reuse-psf                       1    path    path                   Load the psf(s) from the given prefix and skip the inversion for the psf image.
reuse-dirty                     1    path    path                   Load the dirty from the given prefix and skip the inversion for the dirty image.
apply-primary-beam              0    flag    -                      Calculate and apply the primary beam and save images for the Jones components.
reuse-primary-beam              0    flag    -                      If a primary beam image exists on disk, reuse those images.
use-differential-lofar-beam     0    flag    -                      Assume the visibilities have already been beam-corrected for the reference direction.
primary-beam-limit              1    number  real>0                 Level at which to trim the beam when performing image-based beam correction.
mwa-path                        1    path    path                   Set path where to find the MWA beam file(s).
save-psf-pb                     0    flag    -                      When applying beam correction, also save the primary-beam corrected PSF image.
pb-grid-size                    1    number  int>=1                 Specify the grid size in number of pixels at which to evaluate the primary beam.
beam-model                      1    string  enum~:hamaker|lobes|oskardipole|oskarsphericalwave Specify the beam model, only relevant for SKA and LOFAR: Hamaker, Lobes, OskarDipole, OskarSphericalWave.
beam-mode                       1    string  enum~:array_factor|element|full [DEBUGGING ONLY] Manually specify the beam mode: array_factor, element or full.
beam-normalisation-mode         1    string  enum~:none|preapplied|full|amplitude [DEBUGGING ONLY] Manually specify the normalisation of the beam: none, preapplied, full or amplitude.
dry-run                         0    flag    -                      Parses the command line and quits afterwards. No imaging is done.

# ** WEIGHTING OPTIONS **
weight                          1-2  string  weight                 Weightmode can be: natural, uniform, briggs (add the robustness, like: "-weight briggs 0.5").
super-weight                    1    number  real>0                 Increase the weight gridding box size, similar to Casa's superuniform weighting scheme.
mf-weighting                    0    flag    -                      In spectral mode, calculate the weights as if the image was made using MF.
no-mf-weighting                 0    flag    -                      Opposite of -mf-weighting; can be used to turn off MF weighting in -join-channels mode.
weighting-rank-filter           1    number  real>0                 Filter the weights and set high weights to the local mean.
weighting-rank-filter-size      1    number  int>=1                 Set size of weighting rank filter. Default: 16.
taper-gaussian                  1    string  angle                  Taper the weights with a Gaussian function (beamsize in asec, or with a unit: "2amin").
taper-tukey                     1    number  real>0                 Taper the outer weights with a Tukey transition of the given size in lambda.
taper-inner-tukey               1    number  real>0                 Taper the inner weights with a Tukey transition of the given size in lambda.
taper-edge                      1    number  real>=0                Taper the weights with a rectangle, to keep a space of lambda between the edge and gridded visibilities.
taper-edge-tukey                1    number  real>0                 Taper the edge weights with a Tukey window. Lambda is the size of the Tukey transition.
use-weights-as-taper            0    flag    -                      Will not use visibility weights when determining the imaging weights.
store-imaging-weights           0    flag    -                      Will store the imaging weights in a column named 'IMAGING_WEIGHT_SPECTRUM'.

# ** INVERSION OPTIONS **
name                            1    path    path                   Use image-prefix as prefix for output files. Default is 'wsclean'.
size                            2    number  int>=1,int>=1          Set the output image size in number of pixels (without padding): <width> <height>.
padding                         1    number  real>=1                Pad images by the given factor during inversion to avoid aliasing. Default: 1.2 (=20%).
scale                           1    string  angle                  Scale of a pixel. Default unit is degrees, but can be specificied, e.g. -scale 20asec.
predict                         0    flag    -                      Only perform a single prediction for an existing image.
continue                        0    flag    -                      Will continue an earlier WSClean run.
subtract-model                  0    flag    -                      Subtract the model from the data column in the first iteration.
channels-out                    1    number  int>=1                 Splits the bandwidth and makes count nr. of images. Default: 1.
shift                           2    string  ra,dec                 Shift the phase centre to the given location: <ra> <dec>.
gap-channel-division            0    flag    -                      In case of irregular frequency spacing, split largest gaps first.
channel-division-frequencies    1    list    list:real>0            Split the bandwidth at the specified frequencies (in Hz) before the normal bandwidth division.
nwlayers                        1    number  int>=1                 Number of w-layers to use. Default: minimum suggested #w-layers for first MS.
nwlayers-factor                 1    number  real>0                 Use automatic calculation of the number of w-layers, but multiple that number by the given factor.
nwlayers-for-size               2    number  int>=1,int>=1          Use the minimum suggested w-layers for an image of the given size: <width> <height>.
no-small-inversion              0    flag    -                      Do not perform inversion at the Nyquist resolution and upscale the image afterwards.
small-inversion                 0    flag    -                      Perform inversion at the Nyquist resolution and upscale the image afterwards. Default: on.
grid-mode                       1    string  enum~:kb|nn|rect|kb-no-sinc|gaus|bn|bh Kernel and mode used for gridding: kb, nn, rect, kb-no-sinc, gaus, bn. Default: kb.
kernel-size                     1    number  int>=1                 Gridding antialiasing kernel size. Default: 7.
oversampling                    1    number  int>=1                 Oversampling factor used during gridding. Default: 63.
make-psf                        0    flag    -                      Always make the psf, even when no cleaning is performed.
make-psf-only                   0    flag    -                      Only make the psf, no images are made.
visibility-weighting-mode       1    string  enum:normal|squared|unit Specify visibility weighting modi: normal, squared or unit.
no-normalize-for-weighting      0    flag    -                      Disable the normalization for the weights, which makes the PSF's peak one.
baseline-averaging              1    number  real>0                 Enable baseline-dependent averaging. The specified size is in number of wavelengths.
simulate-noise                  1    number  real>=0                Will replace every visibility by a Gaussian distributed value with given standard deviation.
simulate-baseline-noise         1    path    path                   Like -simulate-noise, but the stddevs are provided per baseline, in a text file.
direct-ft                       0    flag    -                      Do not grid the visibilities, but perform a fully accurate direct Fourier transform (slow!).
use-idg                         0    flag    -                      Use the 'image-domain gridder' (Van der Tol et al.) to do the inversions and predictions.
idg-mode                        1    string  enum:cpu|gpu|hybrid    Sets the IDG mode: cpu, gpu or hybrid. Default: cpu.
use-wgridder                    0    flag    -                      Use the w-gridding gridder developed by Martin Reinecke.
wgridder-accuracy               1    number  real>0                 Set the w-gridding accuracy. Default: 1e-4

# ** A-TERM GRIDDING **
aterm-config                    1    path    path                   Specify a parameter set describing how a-terms should be applied.
grid-with-beam                  0    flag    -                      Apply a-terms to correct for the primary beam. This is only possible when IDG is enabled.
beam-aterm-update               1    number  real>0                 Set the ATerm update time in seconds. The default is every 300 seconds.
aterm-kernel-size               1    number  int>=1                 Kernel size reserved for aterms by IDG.
apply-facet-solutions           2    path    path                   Apply solutions from the provided (h5) file per facet: <path-to-file> <name1[,name2]>.
apply-facet-beam                0    flag    -                      Apply beam gains to facet center when gridding facet based images.
facet-beam-update               1    number  real>0                 Set the facet beam update time in seconds. The default is every 120 seconds.
save-aterms                     0    flag    -                      Output a fits file for every aterm update, containing the applied image for every station.

# ** DATA SELECTION OPTIONS **
pol                             1    list    pol                    Polarizations to image, e.g. 'xx,xy,yx,yy'. Default: 'I'.
interval                        2    number  int>=0,int>=0          Only image the given time interval: <start-index> <end-index> (end exclusive).
intervals-out                   1    number  int>=1                 Number of intervals to image inside the selected global interval. Default: 1
even-timesteps                  0    flag    -                      Only select even timesteps.
odd-timesteps                   0    flag    -                      Only select odd timesteps.
channel-range                   2    number  int>=0,int>=0          Only image the given channel range: <start-channel> <end-channel> (end exclusive).
field                           1    list    field                  Image the given field id(s): a comma-separated list of field ids, or 'all'.
spws                            1    list    list:int>=0            Selects only the spws given in the list: a comma-separated list of integers.
data-column                     1    string  text                   Default: CORRECTED_DATA if it exists, otherwise DATA will be used.
maxuvw-m                        1    number  real>0                 Set the max baseline distance in meters.
minuvw-m                        1    number  real>=0                Set the min baseline distance in meters.
maxuv-l                         1    number  real>0                 Set the max uv distance in lambda.
minuv-l                         1    number  real>=0                Set the min uv distance in lambda.
maxw                            1    number  real>0                 Do not grid visibilities with a w-value higher than the given percentage of the max w.

# ** DECONVOLUTION OPTIONS **
niter                           1    number  int>=0                 Maximum number of clean iterations to perform. Default: 0 (=no cleaning)
nmiter                          1    number  int>=0                 Maximum number of major clean (inversion/prediction) iterations. Default: 20.
threshold                       1    string  flux                   Stopping clean thresholding in Jy (a unit may be given, e.g. 1mJy). Default: 0.0
auto-threshold                  1    number  real>=0                Estimate noise level using a robust estimator and stop at sigma x stddev.
auto-mask                       1    number  real>=0                Construct a mask from found components and when a threshold of sigma is reached, continue with it.
local-rms                       0    flag    -                      Instead of using a single RMS for auto thresholding/masking, use a spatially varying RMS image.
local-rms-window                1    number  real>0                 Size of window for creating the RMS background map, in number of PSFs. Default: 25 psfs.
local-rms-method                1    string  enum:rms|rms-with-min  Either 'rms' (default, uses sliding window RMS) or 'rms-with-min'.
gain                            1    number  real>0                 Cleaning gain: Ratio of peak that will be subtracted in each iteration. Default: 0.1
mgain                           1    number  real>=0                Cleaning gain for major iterations. To use major iterations, 0.85 is a good value. Default: 1.0
join-polarizations              0    flag    -                      Perform deconvolution by searching for peaks in the sum of squares of the polarizations.
link-polarizations              1    list    pol                    Links all polarizations to be cleaned from the given list.
facet-regions                   1    path    path                   Split the image into facets using the facet regions defined in the facets.reg file.
join-channels                   0    flag    -                      Perform deconvolution by searching for peaks in the MF image.
spectral-correction             2    string  real>0,list:real       Enable correction of the given spectral function: <reffreq> <term list>, e.g. 150e6 83.084,-0.699,-0.110
no-fast-subminor                0    flag    -                      Do not use the subminor loop optimization during (non-multiscale) cleaning.
multiscale                      0    flag    -                      Clean on different scales. Default: off.
multiscale-scale-bias           1    number  real>0                 Parameter to prevent cleaning small scales in the large-scale iterations. Default: 0.6
multiscale-max-scales           1    number  int>=1                 Set the maximum number of scales that WSClean should use in multiscale cleaning.
multiscale-scales               1    list    list:real>=0           Sets a list of scales (in pixels) to use in multi-scale cleaning, e.g. 0,5,12.5
multiscale-shape                1    string  enum:tapered-quadratic|gaussian Sets the shape function used during multi-scale clean: 'tapered-quadratic' (default) or 'gaussian'.
multiscale-gain                 1    number  real>0                 Size of step made in the subminor loop of multi-scale. Default currently 0.2.
multiscale-convolution-padding  1    number  real>=1                Size of zero-padding for convolutions during the multi-scale cleaning. Default: 1.1
no-multiscale-fast-subminor     0    flag    -                      Disable the 'fast subminor loop' optimization of multi-scale.
python-deconvolution            1    path    path                   Run a custom deconvolution algorithm written in Python.
iuwt                            0    flag    -                      Use the IUWT deconvolution algorithm.
iuwt-snr-test                   0    flag    -                      Stop IUWT when the SNR decreases.
no-iuwt-snr-test                0    flag    -                      Do not stop IUWT when the SNR decreases. Default: no SNR test.
moresane-ext                    1    path    path                   Use the MoreSane deconvolution algorithm, installed at the specified location.
moresane-arg                    1    string  text                   Pass the specified arguments to moresane (one argv word, even with spaces).
moresane-sl                     1    list    list:real              MoreSane --sigmalevel setting for each major loop iteration, e.g. 20,10,5
save-source-list                0    flag    -                      Saves the found clean components as a BBS/DP3 text sky model.
clean-border                    1    number  real>=0                Set the border size in which no cleaning is performed, in percentage of the width/height.
fits-mask                       1    path    path                   Use the specified fits-file as mask during cleaning.
casa-mask                       1    path    path                   Use the specified CASA mask as mask during cleaning.
horizon-mask                    1    string  angle                  Use a mask that avoids cleaning emission beyond the horizon. Distance is an angle (e.g. "5deg").
no-negative                     0    flag    -                      Do not allow negative components during cleaning. Not the default.
negative                        0    flag    -                      Default on: opposite of -no-negative.
stop-negative                   0    flag    -                      Stop on negative components. Not the default.
fit-spectral-pol                1    number  int>=1                 Fit a polynomial over frequency to each clean component (with -join-channels).
fit-spectral-log-pol            1    number  int>=1                 Like fit-spectral-pol, but fits a logarithmic polynomial over frequency instead.
force-spectrum                  1    path    path                   Uses the fits file to force spectral indices (or other/more terms) during the deconvolution.
deconvolution-channels          1    number  int>=1                 Decrease the number of channels as specified by -channels-out to the given number for deconvolution.
squared-channel-joining         0    flag    -                      Use with -join-channels to perform peak finding in the sum of squared values over channels.
parallel-deconvolution          1    number  int>=1                 Deconvolve subimages in parallel. Subimages will be at most of the given size.
deconvolution-threads           1    number  int>=1                 Number of threads to use during deconvolution.

# ** RESTORATION OPTIONS **
restore                         3    path    path                   Restore the model image onto the residual image: <input residual> <input model> <output image>.
restore-list                    3    path    path                   Restore a source list onto the residual image: <input residual> <input list> <output image>.
beam-size                       1    string  angle                  Set a circular beam size (FWHM) in arcsec (or with a unit) for restoring the clean components.
beam-shape                      3    string  angle,angle,angle      Set the FWHM beam shape for restoring: <maj> <min> <position angle>, e.g. 1amin 1amin 3deg.
fit-beam                        0    flag    -                      Determine beam shape by fitting the PSF (default if PSF is made).
no-fit-beam                     0    flag    -                      Do not determine beam shape from the PSF.
beam-fitting-size               1    number  real>0                 Use a fitting box the size of <factor> times the theoretical beam size for fitting a Gaussian to the PSF.
theoretic-beam                  0    flag    -                      Write the beam in output fits files as calculated from the longest projected baseline.
circular-beam                   0    flag    -                      Force the beam to be circular: bmin will be set to bmaj.
elliptical-beam                 0    flag    -                      Allow the beam to be elliptical. Default.
"""


# Options that `wsclean --help` lists (so they are in OPTIONS) but that the
# installed WSClean 3.1 refuses while parsing the command line.
REJECTED: dict[str, str] = {
    "no-normalize-for-weighting": (
        "listed by `wsclean --help` of WSClean 3.1 but refused by it: 'Unknown parameter'"
    ),
    "use-idg": (
        "refused unless WSClean was built with IDG (Debian's wsclean 3.1 is not): "
        "'WSClean was not compiled with IDG'"
    ),
}


def _parse_table(text: str) -> dict[str, WscleanOption]:
    options: dict[str, WscleanOption] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, nargs_text, kind, value, help_text = line.split(None, 4)
        low, _, high = nargs_text.partition("-")
        nargs = (int(low), int(high or low))
        if kind not in KINDS or name in options:
            raise ValueError(f"wsclean_options table line {lineno}: {line!r}")
        if (kind == "flag") != (nargs == (0, 0)) or (kind == "flag") != (value == "-"):
            raise ValueError(f"wsclean_options table line {lineno}: flag <=> nargs 0 <=> value '-'")
        for spec in value.split(","):
            if spec not in ("-", "weight"):
                _word_problem(spec, "")  # (raises KeyError on a spec this module cannot check)
        options[name] = WscleanOption(name=name, kind=kind, nargs=nargs, help=help_text, value=value)
    return options


# ---------------------------------------------------------------- what each word must be

# (Patterns, compiled on first use through re's own cache: most plans check few such words.)
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_INT_RE = r"-?\d+"
_ANGLE_RE = rf"(?i:({_NUMBER})\s*(deg|degrees|rad|amin|arcmin|asec|arcsec|mas|masec|'|'')?)"
_FLUX_RE = rf"({_NUMBER})\s*(Jy|jy|mJy|mjy|µJy|µjy|nJy|njy|KJy|kjy)?"
_RA_RE = r"\d+h\d+m\d+(?:\.\d*)?s|\d+:\d+:\d+(?:\.\d*)?"  # 12h30m00s, 12:30:00 (all three parts)
_DEC_RE = r"[-+]?\d+d\d+m\d+(?:\.\d*)?s|[-+]?\d+\.\d+\.\d+(?:\.\d*)?"  # 60d00m00s, 60.00.00

_NUMBERS = {  # spec -> (integer?, lowest, lowest allowed?, words, example)
    "int": (True, None, True, "a whole number", "1"),
    "int>=0": (True, 0, True, "a whole number, 0 or more", "1000"),
    "int>=1": (True, 1, True, "a whole number, 1 or more", "4"),
    "real": (False, None, True, "a number", "0.5"),
    "real>0": (False, 0, False, "a number above 0", "0.5"),
    "real>=0": (False, 0, True, "a number, 0 or more", "3"),
    "real>=1": (False, 1, True, "a number, 1 or more", "1.2"),
}


def _number_problem(spec: str, word: str) -> str | None:
    integer, low, inclusive, words, _ = _NUMBERS[spec]
    if not re.fullmatch(_INT_RE if integer else _NUMBER, word):
        return words
    x = float(word)
    if not math.isfinite(x) or (low is not None and (x < low or (x == low and not inclusive))):
        return words
    return None


def _word_problem(spec: str, word: str) -> str | None:
    """What ``word`` should be (in words) when it is not a ``spec``, else None. KeyError: unknown spec."""
    if spec in _NUMBERS:
        return _number_problem(spec, word) if word else None
    if spec in ("text", "path"):
        return None
    if spec == "angle":
        m = word and re.fullmatch(_ANGLE_RE, word)
        ok = m and math.isfinite(float(m.group(1)))
        return None if ok or not word else "an angle: a number and a unit (deg, amin, asec, mas, rad), e.g. 1amin"
    if spec == "flux":
        m = word and re.fullmatch(_FLUX_RE, word)
        ok = m and math.isfinite(float(m.group(1)))
        return None if ok or not word else "a flux density: a number and a unit (Jy, mJy, µJy, nJy), e.g. 1mJy"
    if spec in ("ra", "dec"):
        ok = word and re.fullmatch(_RA_RE if spec == "ra" else _DEC_RE, word)
        what = "a right ascension such as 12h30m00s" if spec == "ra" else "a declination such as 60d00m00s"
        return None if ok or not word else what
    if spec == "field":
        ok = not word or word == "all" or all(re.fullmatch(_INT_RE, w) and int(w) >= 0 for w in word.split(","))
        return None if ok or not word else "'all' or field ids separated by commas, e.g. 0,1"
    if spec == "pol":
        return None  # checked whole by wsclean_command.pol_problem
    if spec.startswith("enum"):
        loose, choices = spec.startswith("enum~"), spec.split(":", 1)[1].split("|")
        ok = (word.lower() if loose else word) in choices
        return None if ok or not word else "one of " + ", ".join(choices)
    if spec.startswith("list:"):
        inner = spec[5:]
        if not word:
            return _word_problem(inner, "")
        bad = any(_word_problem(inner, w) for w in word.split(","))
        return f"a comma-separated list, each {_word_problem(inner, '?') or inner}" if bad else None
    raise KeyError(spec)


def check_words(opt: WscleanOption, words: list[str]) -> tuple[str, str] | None:
    """(the word at fault, what it should be) when ``words`` are not what ``opt`` takes, else None."""
    if opt.value == "-":
        return None
    if opt.value == "weight":
        if words and words[0] in ("natural", "uniform") and len(words) == 1:
            return None
        if words and words[0] == "briggs":
            if len(words) == 2 and not _number_problem("real", words[1]):
                return None
            return (" ".join(words), "briggs and its robustness, e.g. 'briggs 0' or 'briggs -0.5'")
        return (" ".join(words), "natural, uniform, or briggs and its robustness, e.g. 'briggs 0'")
    specs = opt.value.split(",")
    for i, word in enumerate(words):
        spec = specs[min(i, len(specs) - 1)]
        why = _word_problem(spec, word if word else " ")
        if why:
            return word, why
    return None


EXAMPLES = {"size": "'1024 1024'", "nwlayers-for-size": "'1024 1024'", "interval": "'0 100'",
            "channel-range": "'0 64'", "spws": "'0,1'", "multiscale-scales": "'0,5,12'",
            "channel-division-frequencies": "'60e6,70e6'", "spectral-correction": "'150e6 -0.7'",
            "beam-shape": "'1amin 1amin 0deg'", "shift": "'12h30m00s 60d00m00s'", "weight": "'briggs 0'"}


def example(opt: WscleanOption) -> str:
    """A value of ``opt`` for a hint, as TOML."""
    if opt.name in EXAMPLES:
        return EXAMPLES[opt.name]
    samples = {"angle": "1amin", "flux": "1mJy", "ra": "12h30m00s", "dec": "60d00m00s", "field": "0",
               "pol": "I", "text": "...", "path": "/path"}
    if opt.value == "weight":
        return "'briggs 0'"
    words = []
    for spec in opt.value.split(","):
        if spec in _NUMBERS:
            words.append(_NUMBERS[spec][4])
        elif spec.startswith("enum"):
            words.append(spec.split(":", 1)[1].split("|")[0])
        elif spec.startswith("list:"):
            inner = spec[5:]
            words.append(f"{_NUMBERS[inner][4]},{_NUMBERS[inner][4]}" if inner in _NUMBERS else "...")
        else:
            words.append(samples.get(spec, "..."))
    if len(words) == 1 and opt.value.split(",")[0] in _NUMBERS:
        return words[0]
    return repr(" ".join(words))


OPTIONS: dict[str, WscleanOption] = _parse_table(_TABLE)


def lookup(name: str) -> WscleanOption | None:
    """The option called ``name`` (a leading '-' or '--' is ignored), or None."""
    return OPTIONS.get(name.lstrip("-"))


def suggest(name: str) -> str | None:
    """The closest valid option name, for "did you mean -X?" messages, or None."""
    import difflib  # only needed on the error path; keeps the import cheap

    matches = difflib.get_close_matches(name.lstrip("-"), OPTIONS.keys(), n=1, cutoff=0.6)
    return matches[0] if matches else None
