"""Make small, real Measurement Sets that WSClean can image, with python-casacore alone.

imgpipe plans and runs WSClean over many Measurement Sets (MS). Its tests and
its demo need MSs that are *real* (casacore opens them, WSClean reads and images
them) yet tiny and fast to make, with no download and no simulator package.
This module builds them from scratch in a fraction of a second.

What one MS holds
-----------------
* An interferometer of ``nant`` stations around Nançay (the NenuFAR site,
  lon 2.1924 deg E, lat 47.3763 deg N), scattered within +-1 km east and north.
  The layout is fixed (it does not depend on ``seed``), so every MS made here
  looks like it came from the same instrument. TELESCOPE_NAME is 'NenuFAR'.
* Cross-correlations only: ``nant*(nant-1)/2`` baselines per time and per SPW.
* ``ntimes`` integrations of ``INTERVAL`` seconds starting at ``START_MJD``.
* One field at (RA, Dec) = (``FIELD_RA_DEG``, ``FIELD_DEC_DEG``) J2000: Dec +60 deg
  is circumpolar at Nançay (never below 17 deg elevation) and the RA is chosen
  so that the field transits at the start of the observation (elevation ~77 deg).
* Four linear correlations XX, XY, YX, YY (CORR_TYPE 9, 10, 11, 12).
* One or more spectral windows (SPW), one DATA_DESCRIPTION row each; the main
  table has rows for every SPW. All SPWs must have the same number of channels,
  because DATA, FLAG and WEIGHT_SPECTRUM have a fixed shape [nchan, 4] (stored
  together in one TiledColumnStMan).
* UVW computed exactly by casacore itself (TaQL ``mscal.uvwj2000()``), from the
  antenna positions, the field direction and the times.
* DATA = unpolarised point sources (XX = YY = flux, XY = YX = 0), with phases
  from the UVW at each channel's wavelength, plus seeded complex gaussian noise.
  WSClean's Stokes I = (XX+YY)/2, so each source images at its given flux.
* FLAG all False, WEIGHT/SIGMA/WEIGHT_SPECTRUM all 1.
* Optionally a CORRECTED_DATA column, with its own data manager.

Sign convention: a source of flux S at direction cosines (l, m) gives
V = S * exp(+2 pi i (u l + v m + w (n - 1))), with (u, v, w) the MS's UVW in
wavelengths and n = sqrt(1 - l^2 - m^2); l grows towards east (increasing RA,
to the *left* of a FITS image), m towards north (up). Note the *plus* sign: the
MS's UVW is antenna2 - antenna1 (that is what casacore computes), and with it
WSClean predicts exp(+2 pi i ...) -- checked against ``wsclean -predict`` of a
one-pixel model (agreement to 1e-2 of a 1 Jy source: the gridder's accuracy).
With the textbook minus sign every source images mirrored through the phase
centre.

What WSClean 3.1 does with them (measured)
------------------------------------------
* ``wsclean -size 256 256 -scale 5arcmin -niter 100 MS`` images a default MS in
  ~0.2 s; the 10 Jy source at the centre peaks at ~9.7 Jy/beam. (The PSF is
  ~8.6' wide, so 5' pixels undersample it and the fitted restoring beam has a
  degenerate minor axis of a few arcsec; use <= 3arcmin for nicer images.)
* Without ``-data-column`` WSClean images CORRECTED_DATA when the column
  exists, DATA otherwise. ``-data-column CORRECTED_DATA`` on an MS without it
  fails with exit code 255 ("Table column CORRECTED_DATA is unknown").
* An MS with more than one SPW is refused unless ``-reorder`` is given
  ("This set contains multiple spws, and can therefore not be opened
  directly ..."); with ``-reorder`` it images (also with two identical SPWs).

Use
---
From the tests (tests/ is on sys.path)::

    from msmaker import make_ms
    ms = make_ms(tmp_path / "obs.MS", nchan=16, corrected_data=True)

As a script (the examples demo)::

    python tests/msmaker.py OUT1.MS OUT2.MS --nchan 16 --corrected-data --overwrite

A default MS (8 antennas, 10 times, 16 channels: 280 rows) takes ~0.05 s to
make (plus ~0.2 s to import casacore, once) and ~0.7 MB of disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import casacore.tables as ct

# --- the fixed parts of the synthetic observation ------------------------------------------

#: Nançay (NenuFAR), geodetic WGS84.
SITE_LON_DEG = 2.1924
SITE_LAT_DEG = 47.3763
SITE_HEIGHT_M = 150.0

#: Observation start: 2024-03-20T00:00:00 UTC, as an MJD (days).
START_MJD = 60389.0
#: Integration time and time step (s).
INTERVAL = 10.0

#: Field centre (J2000, degrees). Dec +60 is circumpolar at Nançay (lat 47.4);
#: the RA equals the local sidereal time at START_MJD, so the field transits then.
FIELD_RA_DEG = 180.0
FIELD_DEC_DEG = 60.0

#: Seed of the antenna layout (kept apart from ``seed`` so the array is always the same).
LAYOUT_SEED = 20240320
#: Half-size of the square (east, north) the antennas are scattered in (m).
LAYOUT_HALF_SIZE_M = 1000.0

SPEED_OF_LIGHT = 299792458.0

#: Linear feeds: XX, XY, YX, YY (casacore Stokes enum values).
CORR_TYPES = np.array([9, 10, 11, 12], dtype=np.int32)
CORR_PRODUCTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.int32)
NCORR = 4


# --- geometry ----------------------------------------------------------------------------

def _geodetic_to_itrf(lon_deg, lat_deg, height_m):
    """WGS84 geodetic position -> ITRF (earth-centred, earth-fixed) x, y, z in metres."""
    a = 6378137.0
    f = 1.0 / 298.257223563
    e2 = f * (2.0 - f)
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    n = a / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    return np.array([
        (n + height_m) * np.cos(lat) * np.cos(lon),
        (n + height_m) * np.cos(lat) * np.sin(lon),
        (n * (1.0 - e2) + height_m) * np.sin(lat),
    ])


def antenna_positions(nant):
    """ITRF positions (nant, 3) in metres of stations scattered +-1 km around Nançay.

    East/north offsets are drawn from a fixed seed and turned into ITRF with the
    local east/north unit vectors at the site; heights are all the site's.
    """
    rng = np.random.default_rng(LAYOUT_SEED)
    east_north = rng.uniform(-LAYOUT_HALF_SIZE_M, LAYOUT_HALF_SIZE_M, size=(nant, 2))
    lon, lat = np.radians(SITE_LON_DEG), np.radians(SITE_LAT_DEG)
    east = np.array([-np.sin(lon), np.cos(lon), 0.0])
    north = np.array([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)])
    centre = _geodetic_to_itrf(SITE_LON_DEG, SITE_LAT_DEG, SITE_HEIGHT_M)
    return centre + east_north[:, :1] * east + east_north[:, 1:] * north


# --- frequencies -------------------------------------------------------------------------

def _spw_frequencies(nchan, nspw, freq_start, chan_width, spw_freqs):
    """List of 1-D arrays of channel centre frequencies (Hz), one per SPW row.

    Without ``spw_freqs``: ``nspw`` contiguous SPWs of ``nchan`` channels each,
    the first channel centred on ``freq_start``.
    """
    if spw_freqs is not None:
        freqs = [np.asarray(f, dtype=np.float64).ravel() for f in spw_freqs]
        if not freqs:
            raise ValueError("spw_freqs must name at least one spectral window")
        if any(f.size == 0 for f in freqs):
            raise ValueError("every spectral window in spw_freqs needs at least one channel")
        if len({f.size for f in freqs}) != 1:
            raise ValueError(
                "all spectral windows must have the same number of channels "
                f"(got {[f.size for f in freqs]}): DATA has a fixed shape [nchan, 4]"
            )
    else:
        if nchan < 1 or nspw < 1:
            raise ValueError(f"need nchan >= 1 and nspw >= 1 (got nchan={nchan}, nspw={nspw})")
        step = nchan * chan_width
        freqs = [freq_start + s * step + np.arange(nchan) * chan_width for s in range(nspw)]
    for f in freqs:
        if np.any(f <= 0):
            raise ValueError("channel frequencies must be positive")
    return freqs


def _channel_widths(freqs, default_width):
    """Per-channel width: spacing of the channel centres, or ``default_width`` for 1 channel."""
    if freqs.size > 1:
        return np.abs(np.gradient(freqs))
    return np.array([abs(default_width)])


# --- table description -------------------------------------------------------------------

def _main_table_desc(nchan):
    """DATA/FLAG/WEIGHT_SPECTRUM with fixed shape [nchan, 4] in one TiledColumnStMan."""
    shape = [nchan, NCORR]
    tiled = dict(shape=shape, datamanagertype="TiledColumnStMan", datamanagergroup="TiledData")
    columns = [
        ct.makearrcoldesc("DATA", 0j, valuetype="complex", **tiled),
        ct.makearrcoldesc("FLAG", False, valuetype="boolean", **tiled),
        ct.makearrcoldesc("WEIGHT_SPECTRUM", 0.0, valuetype="float", **tiled),
        # Fixed shapes for WEIGHT and SIGMA too (variable-shape by default).
        ct.makearrcoldesc("WEIGHT", 0.0, valuetype="float", shape=[NCORR]),
        ct.makearrcoldesc("SIGMA", 0.0, valuetype="float", shape=[NCORR]),
    ]
    desc = ct.maketabdesc(columns)
    # ~32 kB tiles of complex data: [corr, chan, rows] in casacore (Fortran) order.
    rows_per_tile = max(1, 32768 // (8 * NCORR * nchan))
    # Only the tiled columns get an entry: the others go to default_ms's StandardStMan
    # (naming that data manager again here would be a clash).
    dminfo = {"*1": {
        "TYPE": "TiledColumnStMan",
        "NAME": "TiledData",
        "COLUMNS": ["DATA", "FLAG", "WEIGHT_SPECTRUM"],
        "SPEC": {"DEFAULTTILESHAPE": np.array([NCORR, nchan, rows_per_tile], dtype=np.int32)},
    }}
    return desc, dminfo


# --- subtables ---------------------------------------------------------------------------

def _fill_antenna(ms, positions):
    nant = len(positions)
    with ct.table(ms.getkeyword("ANTENNA"), readonly=False, ack=False) as t:
        t.addrows(nant)
        t.putcol("NAME", [f"MA{i:03d}" for i in range(nant)])
        t.putcol("STATION", ["NenuFAR"] * nant)
        t.putcol("TYPE", ["GROUND-BASED"] * nant)
        t.putcol("MOUNT", ["ALT-AZ"] * nant)
        t.putcol("DISH_DIAMETER", np.full(nant, 25.0))  # a NenuFAR mini-array is ~25 m across
        t.putcol("POSITION", positions)
        t.putcol("OFFSET", np.zeros((nant, 3)))
        t.putcol("FLAG_ROW", np.zeros(nant, dtype=bool))


def _fill_feed(ms, nant, time_mid, duration):
    with ct.table(ms.getkeyword("FEED"), readonly=False, ack=False) as t:
        t.addrows(nant)
        t.putcol("ANTENNA_ID", np.arange(nant, dtype=np.int32))
        t.putcol("FEED_ID", np.zeros(nant, dtype=np.int32))
        t.putcol("SPECTRAL_WINDOW_ID", np.full(nant, -1, dtype=np.int32))  # -1: all SPWs
        t.putcol("BEAM_ID", np.full(nant, -1, dtype=np.int32))
        t.putcol("TIME", np.full(nant, time_mid))
        t.putcol("INTERVAL", np.full(nant, duration))
        t.putcol("NUM_RECEPTORS", np.full(nant, 2, dtype=np.int32))
        t.putcol("POLARIZATION_TYPE", np.array([["X", "Y"]] * nant))
        t.putcol("RECEPTOR_ANGLE", np.tile([0.0, np.pi / 2], (nant, 1)))
        t.putcol("BEAM_OFFSET", np.zeros((nant, 2, 2)))
        t.putcol("POL_RESPONSE", np.tile(np.eye(2, dtype=np.complex64), (nant, 1, 1)))
        t.putcol("POSITION", np.zeros((nant, 3)))


def _fill_spectral_windows(ms, freqs_per_spw, chan_width):
    nspw = len(freqs_per_spw)
    with ct.table(ms.getkeyword("SPECTRAL_WINDOW"), readonly=False, ack=False) as t:
        t.addrows(nspw)
        for row, freqs in enumerate(freqs_per_spw):
            widths = _channel_widths(freqs, chan_width)
            t.putcell("NUM_CHAN", row, freqs.size)
            t.putcell("CHAN_FREQ", row, freqs)
            t.putcell("CHAN_WIDTH", row, widths)
            t.putcell("EFFECTIVE_BW", row, widths)
            t.putcell("RESOLUTION", row, widths)
            t.putcell("REF_FREQUENCY", row, float(freqs[0]))
            t.putcell("TOTAL_BANDWIDTH", row, float(widths.sum()))
            t.putcell("MEAS_FREQ_REF", row, 5)  # TOPO
            t.putcell("NAME", row, f"SPW{row}")
            t.putcell("NET_SIDEBAND", row, 1)
            t.putcell("FREQ_GROUP", row, 0)
            t.putcell("FREQ_GROUP_NAME", row, "")
            t.putcell("IF_CONV_CHAIN", row, 0)
            t.putcell("FLAG_ROW", row, False)


def _fill_polarization(ms):
    with ct.table(ms.getkeyword("POLARIZATION"), readonly=False, ack=False) as t:
        t.addrows(1)
        t.putcell("NUM_CORR", 0, NCORR)
        t.putcell("CORR_TYPE", 0, CORR_TYPES)
        t.putcell("CORR_PRODUCT", 0, CORR_PRODUCTS)
        t.putcell("FLAG_ROW", 0, False)


def _fill_data_description(ms, nspw):
    with ct.table(ms.getkeyword("DATA_DESCRIPTION"), readonly=False, ack=False) as t:
        t.addrows(nspw)
        t.putcol("SPECTRAL_WINDOW_ID", np.arange(nspw, dtype=np.int32))
        t.putcol("POLARIZATION_ID", np.zeros(nspw, dtype=np.int32))
        t.putcol("FLAG_ROW", np.zeros(nspw, dtype=bool))


def _fill_field(ms, time_start):
    direction = np.radians([[FIELD_RA_DEG, FIELD_DEC_DEG]])  # shape [NUM_POLY+1, 2]
    with ct.table(ms.getkeyword("FIELD"), readonly=False, ack=False) as t:
        t.addrows(1)
        t.putcell("NAME", 0, "SYNTH_FIELD")
        t.putcell("CODE", 0, "")
        t.putcell("TIME", 0, time_start)
        t.putcell("NUM_POLY", 0, 0)
        for col in ("DELAY_DIR", "PHASE_DIR", "REFERENCE_DIR"):
            t.putcell(col, 0, direction)
        t.putcell("SOURCE_ID", 0, -1)  # no SOURCE table
        t.putcell("FLAG_ROW", 0, False)


def _fill_observation(ms, time_start, time_end):
    with ct.table(ms.getkeyword("OBSERVATION"), readonly=False, ack=False) as t:
        t.addrows(1)
        t.putcell("TELESCOPE_NAME", 0, "NenuFAR")
        t.putcell("TIME_RANGE", 0, np.array([time_start, time_end]))
        t.putcell("OBSERVER", 0, "imgpipe tests")
        t.putcell("PROJECT", 0, "msmaker")
        t.putcell("SCHEDULE_TYPE", 0, "")
        t.putcell("RELEASE_DATE", 0, 0.0)
        t.putcell("FLAG_ROW", 0, False)


def _fill_processor(ms):
    with ct.table(ms.getkeyword("PROCESSOR"), readonly=False, ack=False) as t:
        t.addrows(1)
        t.putcell("TYPE", 0, "CORRELATOR")
        t.putcell("SUB_TYPE", 0, "msmaker")
        t.putcell("TYPE_ID", 0, -1)
        t.putcell("MODE_ID", 0, -1)
        t.putcell("FLAG_ROW", 0, False)


# --- visibilities ------------------------------------------------------------------------

def _model_visibilities(uvw, freqs, sources):
    """Point-source visibilities (nrow, nchan) for Stokes I, from UVW (m) and frequencies (Hz).

    Phase sign +: see the module docstring (MS UVW = antenna2 - antenna1).
    """
    vis = np.zeros((uvw.shape[0], freqs.size), dtype=np.complex128)
    inv_wavelength = freqs / SPEED_OF_LIGHT
    for dl, dm, flux in sources:
        dn = np.sqrt(1.0 - dl * dl - dm * dm) - 1.0
        path = uvw[:, 0] * dl + uvw[:, 1] * dm + uvw[:, 2] * dn  # metres, per row
        vis += flux * np.exp(2j * np.pi * np.outer(path, inv_wavelength))
    return vis


# --- the maker ---------------------------------------------------------------------------

_LEAP_SECOND_WARNING = re.compile(rb"^.*SEVERE\tMeasTable::dUTC.*\n?", re.MULTILINE)


@contextlib.contextmanager
def _without_leap_second_warning():
    """Keep casacore's "Leap second table TAI_UTC seems out-of-date" (3 SEVERE lines, on the
    process's stderr, from C++) out of what a user reads: python-casacore's wheel dates its
    TAI_UTC table, and casacore warns once it is half a year old, whatever the epoch converted
    (ours, 2024, is in the table). Every other line casacore writes is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            rest = _LEAP_SECOND_WARNING.sub(b"", caught.read())
            if rest:
                sys.stderr.buffer.write(rest) if hasattr(sys.stderr, "buffer") else sys.stderr.write(rest.decode())
                sys.stderr.flush()


def make_ms(path, *, nchan=16, nspw=1, freq_start=50e6, chan_width=195312.5,
            spw_freqs=None, ntimes=10, nant=8, corrected_data=False,
            data_column_value=None,
            sources=((0.0, 0.0, 10.0), (0.02, -0.01, 5.0)),
            noise=0.01, seed=0, overwrite=False):
    """Write a small, valid Measurement Set at ``path``; return its absolute path.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write the MS (a directory). Its parent must exist.
    nchan, nspw, freq_start, chan_width :
        ``nspw`` contiguous spectral windows of ``nchan`` channels of width
        ``chan_width`` Hz; the first channel is centred on ``freq_start`` Hz.
    spw_freqs : list of lists of float, optional
        Channel centre frequencies (Hz), one list per SPW row; overrides the
        four above. All lists must be equally long (ValueError otherwise).
        Two identical lists give two SPW rows with identical frequencies.
    ntimes, nant :
        Number of integrations (``INTERVAL`` s each) and of antennas (>= 2).
        Rows = ntimes * nspw * nant*(nant-1)/2 (cross-correlations only).
    corrected_data : bool
        Also make a CORRECTED_DATA column (own data manager) holding the
        simulated sky (sources + noise).
    data_column_value : complex, optional
        If given, DATA is filled with this constant instead of the simulated
        sky (CORRECTED_DATA, if made, still holds the simulated sky) -- so a
        test can tell which column was imaged.
    sources : iterable of (dl, dm, flux)
        Unpolarised point sources: offsets from the phase centre as direction
        cosines (radians, l towards east/increasing RA, m towards north) and
        Stokes I flux (Jy).
    noise : float
        Standard deviation (Jy) of the real and of the imaginary part of the
        gaussian noise added to every correlation; 0 for none.
    seed : int
        Seed of the noise.
    overwrite : bool
        Remove an existing ``path`` first; otherwise an existing path is an
        error (FileExistsError).
    """
    path = os.path.abspath(os.fspath(path))
    if nant < 2:
        raise ValueError(f"need at least 2 antennas for a baseline (got nant={nant})")
    if ntimes < 1:
        raise ValueError(f"need at least 1 time (got ntimes={ntimes})")
    freqs_per_spw = _spw_frequencies(nchan, nspw, freq_start, chan_width, spw_freqs)
    nspw, nchan = len(freqs_per_spw), freqs_per_spw[0].size
    sources = [tuple(map(float, s)) for s in sources]
    for dl, dm, _ in sources:
        if dl * dl + dm * dm >= 1.0:
            raise ValueError(f"source offset ({dl}, {dm}) is not a direction (l^2 + m^2 must be < 1)")

    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists (overwrite=True, or --overwrite, replaces it)")
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)

    # Row layout: time-major, then SPW, then baseline (antenna1 < antenna2).
    ant1, ant2 = np.triu_indices(nant, k=1)
    nbl = ant1.size
    time_start = START_MJD * 86400.0  # MS TIME is MJD in seconds (UTC)
    times = time_start + (np.arange(ntimes) + 0.5) * INTERVAL  # integration centres
    nrow = ntimes * nspw * nbl
    row_time = np.repeat(times, nspw * nbl)
    row_ddid = np.tile(np.repeat(np.arange(nspw, dtype=np.int32), nbl), ntimes)
    row_ant1 = np.tile(ant1.astype(np.int32), ntimes * nspw)
    row_ant2 = np.tile(ant2.astype(np.int32), ntimes * nspw)
    time_end = time_start + ntimes * INTERVAL

    desc, dminfo = _main_table_desc(nchan)
    ms = ct.default_ms(path, desc, dminfo)
    try:
        _fill_antenna(ms, antenna_positions(nant))
        _fill_feed(ms, nant, 0.5 * (time_start + time_end), time_end - time_start)
        _fill_spectral_windows(ms, freqs_per_spw, chan_width)
        _fill_polarization(ms)
        _fill_data_description(ms, nspw)
        _fill_field(ms, time_start)
        _fill_observation(ms, time_start, time_end)
        _fill_processor(ms)

        ms.addrows(nrow)
        ms.putcol("ANTENNA1", row_ant1)
        ms.putcol("ANTENNA2", row_ant2)
        ms.putcol("DATA_DESC_ID", row_ddid)
        ms.putcol("TIME", row_time)
        ms.putcol("TIME_CENTROID", row_time)
        ms.putcol("INTERVAL", np.full(nrow, INTERVAL))
        ms.putcol("EXPOSURE", np.full(nrow, INTERVAL))
        ms.putcol("SCAN_NUMBER", np.ones(nrow, dtype=np.int32))
        ms.putcol("STATE_ID", np.full(nrow, -1, dtype=np.int32))  # no STATE table rows
        # FIELD_ID, FEED1/2, ARRAY_ID, OBSERVATION_ID, PROCESSOR_ID: 0 (the default).
        ms.putcol("FLAG_ROW", np.zeros(nrow, dtype=bool))
        ms.putcol("WEIGHT", np.ones((nrow, NCORR), dtype=np.float32))
        ms.putcol("SIGMA", np.ones((nrow, NCORR), dtype=np.float32))
        ms.putcol("WEIGHT_SPECTRUM", np.ones((nrow, nchan, NCORR), dtype=np.float32))
        ms.putcol("FLAG", np.zeros((nrow, nchan, NCORR), dtype=bool))
        ms.flush()

        # Exact UVW (J2000) from the antenna positions, field and times, by casacore.
        with _without_leap_second_warning():
            ct.taql("UPDATE $ms SET UVW = mscal.uvwj2000()")
        uvw = ms.getcol("UVW")

        # The sky: XX = YY = Stokes I model, XY = YX = 0; plus noise on all four.
        sky = np.zeros((nrow, nchan, NCORR), dtype=np.complex64)
        for spw, freqs in enumerate(freqs_per_spw):
            rows = row_ddid == spw
            model = _model_visibilities(uvw[rows], freqs, sources)
            sky[rows, :, 0] = model
            sky[rows, :, 3] = model
        if noise:
            rng = np.random.default_rng(seed)
            sky += (noise * (rng.standard_normal(sky.shape)
                             + 1j * rng.standard_normal(sky.shape))).astype(np.complex64)

        if data_column_value is None:
            ms.putcol("DATA", sky)
        else:
            ms.putcol("DATA", np.full(sky.shape, complex(data_column_value), dtype=np.complex64))

        if corrected_data:
            _add_corrected_data(ms, sky)
    finally:
        ms.close()
    return path


def _add_corrected_data(ms, values):
    """Add CORRECTED_DATA shaped like DATA, in a data manager of its own, and fill it."""
    coldesc = ms.getcoldesc("DATA")
    dminfo = ms.getdminfo("DATA")
    dminfo["NAME"] = "TiledCorrectedData"  # must differ from DATA's data manager
    coldesc["dataManagerGroup"] = "TiledCorrectedData"
    ms.addcols(ct.maketabdesc(ct.makecoldesc("CORRECTED_DATA", coldesc)), dminfo)
    ms.putcol("CORRECTED_DATA", values)


# --- command line ------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Make small synthetic Measurement Sets (NenuFAR-like, point sources + noise) "
                    "that WSClean can image.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Measurement Set(s) to write")
    parser.add_argument("--nchan", type=int, default=16, help="channels per SPW (default 16)")
    parser.add_argument("--nspw", type=int, default=1, help="contiguous SPWs (default 1)")
    parser.add_argument("--freq-start", type=float, default=50e6,
                        help="centre of the first channel, Hz (default 50e6)")
    parser.add_argument("--chan-width", type=float, default=195312.5,
                        help="channel width, Hz (default 195312.5)")
    parser.add_argument("--ntimes", type=int, default=10, help="integrations (default 10)")
    parser.add_argument("--nant", type=int, default=8, help="antennas (default 8)")
    parser.add_argument("--corrected-data", action="store_true", help="also write CORRECTED_DATA")
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed of the first MS; the next ones use seed+1, seed+2, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace existing MSs")
    args = parser.parse_args(argv)
    for i, p in enumerate(args.paths):
        try:
            made = make_ms(p, nchan=args.nchan, nspw=args.nspw, freq_start=args.freq_start,
                           chan_width=args.chan_width, ntimes=args.ntimes, nant=args.nant,
                           corrected_data=args.corrected_data, seed=args.seed + i,
                           overwrite=args.overwrite)
        except (ValueError, FileExistsError) as e:
            parser.exit(2, f"msmaker: {p}: {e}\n")
        print(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
