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

from dataclasses import dataclass

WSCLEAN_VERSION = "3.1"

KINDS = ("flag", "number", "string", "path", "list")


@dataclass(frozen=True)
class WscleanOption:
    name: str  # without the leading '-', e.g. 'size', 'temp-dir'
    kind: str  # one of KINDS
    nargs: tuple[int, int]  # (min, max) argv words after the option
    help: str  # one line, from `wsclean --help`

    @property
    def flag(self) -> str:
        """The option as written on the command line, e.g. '-size'."""
        return "-" + self.name


# name                          nargs kind    help
_TABLE = """
# ** GENERAL OPTIONS **
version                         0    flag    Print WSClean's version and exit.
j                               1    number  Specify number of computing threads to use, i.e., number of cpu cores that will be used.
parallel-gridding               1    number  Will execute multiple gridders simultaneously.
parallel-reordering             1    number  Process the reordering with multipliple threads.
no-work-on-master               0    flag    In MPI runs, do not use the master for gridding.
mem                             1    number  Limit memory usage to the given fraction of the total system memory.
abs-mem                         1    number  Like -mem, but this specifies a fixed amount of memory in gigabytes.
verbose                         0    flag    Increase verbosity of output.
v                               0    flag    Increase verbosity of output (same as -verbose).
log-time                        0    flag    Add date and time to each line in the output.
quiet                           0    flag    Do not output anything but errors.
reorder                         0    flag    Force reordering of Measurement Set.
no-reorder                      0    flag    Disable reordering of Measurement Set.
temp-dir                        1    path    Set the temporary directory used when reordering files.
update-model-required           0    flag    The model data column is required to contain valid model data after imaging (default).
no-update-model-required        0    flag    The model data column is not required to contain valid model data after imaging.
no-dirty                        0    flag    Do not save the dirty image.
save-first-residual             0    flag    Save the residual after the first iteration.
save-weights                    0    flag    Save the gridded weights in the a fits file named <image-prefix>-weights.fits.
save-uv                         0    flag    Save the gridded uv plane, i.e., the FFT of the residual image.
reuse-psf                       1    path    Load the psf(s) from the given prefix and skip the inversion for the psf image.
reuse-dirty                     1    path    Load the dirty from the given prefix and skip the inversion for the dirty image.
apply-primary-beam              0    flag    Calculate and apply the primary beam and save images for the Jones components.
reuse-primary-beam              0    flag    If a primary beam image exists on disk, reuse those images.
use-differential-lofar-beam     0    flag    Assume the visibilities have already been beam-corrected for the reference direction.
primary-beam-limit              1    number  Level at which to trim the beam when performing image-based beam correction.
mwa-path                        1    path    Set path where to find the MWA beam file(s).
save-psf-pb                     0    flag    When applying beam correction, also save the primary-beam corrected PSF image.
pb-grid-size                    1    number  Specify the grid size in number of pixels at which to evaluate the primary beam.
beam-model                      1    string  Specify the beam model, only relevant for SKA and LOFAR: Hamaker, Lobes, OskarDipole, OskarSphericalWave.
beam-mode                       1    string  [DEBUGGING ONLY] Manually specify the beam mode: array_factor, element or full.
beam-normalisation-mode         1    string  [DEBUGGING ONLY] Manually specify the normalisation of the beam: none, preapplied, full or amplitude.
dry-run                         0    flag    Parses the command line and quits afterwards. No imaging is done.

# ** WEIGHTING OPTIONS **
weight                          1-2  string  Weightmode can be: natural, uniform, briggs (add the robustness, like: "-weight briggs 0.5").
super-weight                    1    number  Increase the weight gridding box size, similar to Casa's superuniform weighting scheme.
mf-weighting                    0    flag    In spectral mode, calculate the weights as if the image was made using MF.
no-mf-weighting                 0    flag    Opposite of -mf-weighting; can be used to turn off MF weighting in -join-channels mode.
weighting-rank-filter           1    number  Filter the weights and set high weights to the local mean.
weighting-rank-filter-size      1    number  Set size of weighting rank filter. Default: 16.
taper-gaussian                  1    string  Taper the weights with a Gaussian function (beamsize in asec, or with a unit: "2amin").
taper-tukey                     1    number  Taper the outer weights with a Tukey transition of the given size in lambda.
taper-inner-tukey               1    number  Taper the inner weights with a Tukey transition of the given size in lambda.
taper-edge                      1    number  Taper the weights with a rectangle, to keep a space of lambda between the edge and gridded visibilities.
taper-edge-tukey                1    number  Taper the edge weights with a Tukey window. Lambda is the size of the Tukey transition.
use-weights-as-taper            0    flag    Will not use visibility weights when determining the imaging weights.
store-imaging-weights           0    flag    Will store the imaging weights in a column named 'IMAGING_WEIGHT_SPECTRUM'.

# ** INVERSION OPTIONS **
name                            1    path    Use image-prefix as prefix for output files. Default is 'wsclean'.
size                            2    number  Set the output image size in number of pixels (without padding): <width> <height>.
padding                         1    number  Pad images by the given factor during inversion to avoid aliasing. Default: 1.2 (=20%).
scale                           1    string  Scale of a pixel. Default unit is degrees, but can be specificied, e.g. -scale 20asec.
predict                         0    flag    Only perform a single prediction for an existing image.
continue                        0    flag    Will continue an earlier WSClean run.
subtract-model                  0    flag    Subtract the model from the data column in the first iteration.
channels-out                    1    number  Splits the bandwidth and makes count nr. of images. Default: 1.
shift                           2    string  Shift the phase centre to the given location: <ra> <dec>.
gap-channel-division            0    flag    In case of irregular frequency spacing, split largest gaps first.
channel-division-frequencies    1    list    Split the bandwidth at the specified frequencies (in Hz) before the normal bandwidth division.
nwlayers                        1    number  Number of w-layers to use. Default: minimum suggested #w-layers for first MS.
nwlayers-factor                 1    number  Use automatic calculation of the number of w-layers, but multiple that number by the given factor.
nwlayers-for-size               2    number  Use the minimum suggested w-layers for an image of the given size: <width> <height>.
no-small-inversion              0    flag    Do not perform inversion at the Nyquist resolution and upscale the image afterwards.
small-inversion                 0    flag    Perform inversion at the Nyquist resolution and upscale the image afterwards. Default: on.
grid-mode                       1    string  Kernel and mode used for gridding: kb, nn, rect, kb-no-sinc, gaus, bn. Default: kb.
kernel-size                     1    number  Gridding antialiasing kernel size. Default: 7.
oversampling                    1    number  Oversampling factor used during gridding. Default: 63.
make-psf                        0    flag    Always make the psf, even when no cleaning is performed.
make-psf-only                   0    flag    Only make the psf, no images are made.
visibility-weighting-mode       1    string  Specify visibility weighting modi: normal, squared or unit.
no-normalize-for-weighting      0    flag    Disable the normalization for the weights, which makes the PSF's peak one.
baseline-averaging              1    number  Enable baseline-dependent averaging. The specified size is in number of wavelengths.
simulate-noise                  1    number  Will replace every visibility by a Gaussian distributed value with given standard deviation.
simulate-baseline-noise         1    path    Like -simulate-noise, but the stddevs are provided per baseline, in a text file.
direct-ft                       0    flag    Do not grid the visibilities, but perform a fully accurate direct Fourier transform (slow!).
use-idg                         0    flag    Use the 'image-domain gridder' (Van der Tol et al.) to do the inversions and predictions.
idg-mode                        1    string  Sets the IDG mode: cpu, gpu or hybrid. Default: cpu.
use-wgridder                    0    flag    Use the w-gridding gridder developed by Martin Reinecke.
wgridder-accuracy               1    number  Set the w-gridding accuracy. Default: 1e-4

# ** A-TERM GRIDDING **
aterm-config                    1    path    Specify a parameter set describing how a-terms should be applied.
grid-with-beam                  0    flag    Apply a-terms to correct for the primary beam. This is only possible when IDG is enabled.
beam-aterm-update               1    number  Set the ATerm update time in seconds. The default is every 300 seconds.
aterm-kernel-size               1    number  Kernel size reserved for aterms by IDG.
apply-facet-solutions           2    path    Apply solutions from the provided (h5) file per facet: <path-to-file> <name1[,name2]>.
apply-facet-beam                0    flag    Apply beam gains to facet center when gridding facet based images.
facet-beam-update               1    number  Set the facet beam update time in seconds. The default is every 120 seconds.
save-aterms                     0    flag    Output a fits file for every aterm update, containing the applied image for every station.

# ** DATA SELECTION OPTIONS **
pol                             1    list    Polarizations to image, e.g. 'xx,xy,yx,yy'. Default: 'I'.
interval                        2    number  Only image the given time interval: <start-index> <end-index> (end exclusive).
intervals-out                   1    number  Number of intervals to image inside the selected global interval. Default: 1
even-timesteps                  0    flag    Only select even timesteps.
odd-timesteps                   0    flag    Only select odd timesteps.
channel-range                   2    number  Only image the given channel range: <start-channel> <end-channel> (end exclusive).
field                           1    list    Image the given field id(s): a comma-separated list of field ids, or 'all'.
spws                            1    list    Selects only the spws given in the list: a comma-separated list of integers.
data-column                     1    string  Default: CORRECTED_DATA if it exists, otherwise DATA will be used.
maxuvw-m                        1    number  Set the max baseline distance in meters.
minuvw-m                        1    number  Set the min baseline distance in meters.
maxuv-l                         1    number  Set the max uv distance in lambda.
minuv-l                         1    number  Set the min uv distance in lambda.
maxw                            1    number  Do not grid visibilities with a w-value higher than the given percentage of the max w.

# ** DECONVOLUTION OPTIONS **
niter                           1    number  Maximum number of clean iterations to perform. Default: 0 (=no cleaning)
nmiter                          1    number  Maximum number of major clean (inversion/prediction) iterations. Default: 20.
threshold                       1    string  Stopping clean thresholding in Jy (a unit may be given, e.g. 1mJy). Default: 0.0
auto-threshold                  1    number  Estimate noise level using a robust estimator and stop at sigma x stddev.
auto-mask                       1    number  Construct a mask from found components and when a threshold of sigma is reached, continue with it.
local-rms                       0    flag    Instead of using a single RMS for auto thresholding/masking, use a spatially varying RMS image.
local-rms-window                1    number  Size of window for creating the RMS background map, in number of PSFs. Default: 25 psfs.
local-rms-method                1    string  Either 'rms' (default, uses sliding window RMS) or 'rms-with-min'.
gain                            1    number  Cleaning gain: Ratio of peak that will be subtracted in each iteration. Default: 0.1
mgain                           1    number  Cleaning gain for major iterations. To use major iterations, 0.85 is a good value. Default: 1.0
join-polarizations              0    flag    Perform deconvolution by searching for peaks in the sum of squares of the polarizations.
link-polarizations              1    list    Links all polarizations to be cleaned from the given list.
facet-regions                   1    path    Split the image into facets using the facet regions defined in the facets.reg file.
join-channels                   0    flag    Perform deconvolution by searching for peaks in the MF image.
spectral-correction             2    string  Enable correction of the given spectral function: <reffreq> <term list>, e.g. 150e6 83.084,-0.699,-0.110
no-fast-subminor                0    flag    Do not use the subminor loop optimization during (non-multiscale) cleaning.
multiscale                      0    flag    Clean on different scales. Default: off.
multiscale-scale-bias           1    number  Parameter to prevent cleaning small scales in the large-scale iterations. Default: 0.6
multiscale-max-scales           1    number  Set the maximum number of scales that WSClean should use in multiscale cleaning.
multiscale-scales               1    list    Sets a list of scales (in pixels) to use in multi-scale cleaning, e.g. 0,5,12.5
multiscale-shape                1    string  Sets the shape function used during multi-scale clean: 'tapered-quadratic' (default) or 'gaussian'.
multiscale-gain                 1    number  Size of step made in the subminor loop of multi-scale. Default currently 0.2.
multiscale-convolution-padding  1    number  Size of zero-padding for convolutions during the multi-scale cleaning. Default: 1.1
no-multiscale-fast-subminor     0    flag    Disable the 'fast subminor loop' optimization of multi-scale.
python-deconvolution            1    path    Run a custom deconvolution algorithm written in Python.
iuwt                            0    flag    Use the IUWT deconvolution algorithm.
iuwt-snr-test                   0    flag    Stop IUWT when the SNR decreases.
no-iuwt-snr-test                0    flag    Do not stop IUWT when the SNR decreases. Default: no SNR test.
moresane-ext                    1    path    Use the MoreSane deconvolution algorithm, installed at the specified location.
moresane-arg                    1    string  Pass the specified arguments to moresane (one argv word, even with spaces).
moresane-sl                     1    list    MoreSane --sigmalevel setting for each major loop iteration, e.g. 20,10,5
save-source-list                0    flag    Saves the found clean components as a BBS/DP3 text sky model.
clean-border                    1    number  Set the border size in which no cleaning is performed, in percentage of the width/height.
fits-mask                       1    path    Use the specified fits-file as mask during cleaning.
casa-mask                       1    path    Use the specified CASA mask as mask during cleaning.
horizon-mask                    1    string  Use a mask that avoids cleaning emission beyond the horizon. Distance is an angle (e.g. "5deg").
no-negative                     0    flag    Do not allow negative components during cleaning. Not the default.
negative                        0    flag    Default on: opposite of -no-negative.
stop-negative                   0    flag    Stop on negative components. Not the default.
fit-spectral-pol                1    number  Fit a polynomial over frequency to each clean component (with -join-channels).
fit-spectral-log-pol            1    number  Like fit-spectral-pol, but fits a logarithmic polynomial over frequency instead.
force-spectrum                  1    path    Uses the fits file to force spectral indices (or other/more terms) during the deconvolution.
deconvolution-channels          1    number  Decrease the number of channels as specified by -channels-out to the given number for deconvolution.
squared-channel-joining         0    flag    Use with -join-channels to perform peak finding in the sum of squared values over channels.
parallel-deconvolution          1    number  Deconvolve subimages in parallel. Subimages will be at most of the given size.
deconvolution-threads           1    number  Number of threads to use during deconvolution.

# ** RESTORATION OPTIONS **
restore                         3    path    Restore the model image onto the residual image: <input residual> <input model> <output image>.
restore-list                    3    path    Restore a source list onto the residual image: <input residual> <input list> <output image>.
beam-size                       1    string  Set a circular beam size (FWHM) in arcsec (or with a unit) for restoring the clean components.
beam-shape                      3    string  Set the FWHM beam shape for restoring: <maj> <min> <position angle>, e.g. 1amin 1amin 3deg.
fit-beam                        0    flag    Determine beam shape by fitting the PSF (default if PSF is made).
no-fit-beam                     0    flag    Do not determine beam shape from the PSF.
beam-fitting-size               1    number  Use a fitting box the size of <factor> times the theoretical beam size for fitting a Gaussian to the PSF.
theoretic-beam                  0    flag    Write the beam in output fits files as calculated from the longest projected baseline.
circular-beam                   0    flag    Force the beam to be circular: bmin will be set to bmaj.
elliptical-beam                 0    flag    Allow the beam to be elliptical. Default.
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
        name, nargs_text, kind, help_text = line.split(None, 3)
        low, _, high = nargs_text.partition("-")
        nargs = (int(low), int(high or low))
        if kind not in KINDS or name in options:
            raise ValueError(f"wsclean_options table line {lineno}: {line!r}")
        if (kind == "flag") != (nargs == (0, 0)):
            raise ValueError(f"wsclean_options table line {lineno}: flag <=> nargs 0")
        options[name] = WscleanOption(name=name, kind=kind, nargs=nargs, help=help_text)
    return options


OPTIONS: dict[str, WscleanOption] = _parse_table(_TABLE)


def lookup(name: str) -> WscleanOption | None:
    """The option called ``name`` (a leading '-' or '--' is ignored), or None."""
    return OPTIONS.get(name.lstrip("-"))


def suggest(name: str) -> str | None:
    """The closest valid option name, for "did you mean -X?" messages, or None."""
    import difflib  # only needed on the error path; keeps the import cheap

    matches = difflib.get_close_matches(name.lstrip("-"), OPTIONS.keys(), n=1, cutoff=0.6)
    return matches[0] if matches else None
