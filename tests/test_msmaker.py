"""Tests of the synthetic Measurement Set maker (tests/msmaker.py).

Each MS takes ~0.05 s to make; the WSClean tests (~0.3 s each) are skipped
where wsclean is not installed.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import casacore.tables as ct

import msmaker
from msmaker import make_ms

WSCLEAN = shutil.which("wsclean")
needs_wsclean = pytest.mark.skipif(WSCLEAN is None, reason="wsclean not installed")


def _open(path, sub=None):
    return ct.table(f"{path}/{sub}" if sub else str(path), ack=False)


def test_default_ms_shape_and_contents(tmp_path):
    path = make_ms(tmp_path / "a.MS")
    assert path == str((tmp_path / "a.MS").resolve())
    with _open(path, "SPECTRAL_WINDOW") as spw:
        assert spw.nrows() == 1
        assert spw.getcell("NUM_CHAN", 0) == 16
        freqs = spw.getcell("CHAN_FREQ", 0)
        np.testing.assert_allclose(freqs, 50e6 + np.arange(16) * 195312.5)
        np.testing.assert_allclose(spw.getcell("CHAN_WIDTH", 0), 195312.5)
    with _open(path, "POLARIZATION") as pol:
        assert list(pol.getcell("CORR_TYPE", 0)) == [9, 10, 11, 12]
    with _open(path, "OBSERVATION") as obs:
        assert obs.getcell("TELESCOPE_NAME", 0) == "NenuFAR"
    with _open(path, "ANTENNA") as ant:
        assert ant.nrows() == 8
    with _open(path) as ms:
        assert ms.nrows() == 10 * 8 * 7 // 2
        assert "CORRECTED_DATA" not in ms.colnames()
        assert ms.getcol("DATA").shape == (280, 16, 4)
        assert not ms.getcol("FLAG").any()
        assert (ms.getcol("ANTENNA1") < ms.getcol("ANTENNA2")).all()
        uvw = ms.getcol("UVW")
        assert (np.linalg.norm(uvw, axis=1) > 1.0).all()  # every row, not just some
        assert np.abs(uvw).max() < 3000.0  # antennas within +-1 km


def test_corrected_data_is_a_copy_in_its_own_data_manager(tmp_path):
    path = make_ms(tmp_path / "c.MS", corrected_data=True)
    with _open(path) as ms:
        assert "CORRECTED_DATA" in ms.colnames()
        assert ms.getdminfo("CORRECTED_DATA")["NAME"] != ms.getdminfo("DATA")["NAME"]
        np.testing.assert_array_equal(ms.getcol("CORRECTED_DATA"), ms.getcol("DATA"))


def test_data_column_value_leaves_the_sky_in_corrected_data(tmp_path):
    path = make_ms(tmp_path / "v.MS", corrected_data=True, data_column_value=0)
    with _open(path) as ms:
        assert not ms.getcol("DATA").any()
        assert np.abs(ms.getcol("CORRECTED_DATA")).max() > 1.0


def test_point_source_without_noise_has_its_flux_as_amplitude(tmp_path):
    path = make_ms(tmp_path / "p.MS", sources=((0.01, 0.02, 3.0),), noise=0)
    with _open(path) as ms:
        data = ms.getcol("DATA")
    np.testing.assert_allclose(np.abs(data[:, :, [0, 3]]), 3.0, rtol=1e-5)
    assert not data[:, :, [1, 2]].any()


def test_seed_makes_it_reproducible(tmp_path):
    a = make_ms(tmp_path / "a.MS", seed=3)
    b = make_ms(tmp_path / "b.MS", seed=3)
    c = make_ms(tmp_path / "c.MS", seed=4)
    with _open(a) as ta, _open(b) as tb, _open(c) as tc:
        np.testing.assert_array_equal(ta.getcol("DATA"), tb.getcol("DATA"))
        assert not np.array_equal(ta.getcol("DATA"), tc.getcol("DATA"))


def test_two_contiguous_spectral_windows(tmp_path):
    path = make_ms(tmp_path / "s.MS", nspw=2, nchan=8)
    with _open(path, "SPECTRAL_WINDOW") as spw:
        assert spw.nrows() == 2
        f0, f1 = spw.getcell("CHAN_FREQ", 0), spw.getcell("CHAN_FREQ", 1)
        assert f0.size == f1.size == 8
        assert f1[0] == pytest.approx(f0[-1] + 195312.5)  # contiguous, not overlapping
    with _open(path, "DATA_DESCRIPTION") as dd:
        assert list(dd.getcol("SPECTRAL_WINDOW_ID")) == [0, 1]
    with _open(path) as ms:
        assert ms.nrows() == 2 * 280
        assert list(np.bincount(ms.getcol("DATA_DESC_ID"))) == [280, 280]


def test_spw_freqs_gives_identical_spectral_windows(tmp_path):
    freqs = [60e6, 60.1e6, 60.2e6]
    path = make_ms(tmp_path / "i.MS", spw_freqs=[freqs, freqs])
    with _open(path, "SPECTRAL_WINDOW") as spw:
        assert list(spw.getcol("NUM_CHAN")) == [3, 3]
        np.testing.assert_allclose(spw.getcol("CHAN_FREQ"), [freqs, freqs])
        np.testing.assert_allclose(spw.getcol("CHAN_WIDTH"), 0.1e6)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="same number of channels"):
        make_ms(tmp_path / "x.MS", spw_freqs=[[50e6, 51e6], [50e6]])
    with pytest.raises(ValueError):
        make_ms(tmp_path / "x.MS", nant=1)
    make_ms(tmp_path / "e.MS", ntimes=1, nant=2)
    with pytest.raises(FileExistsError):
        make_ms(tmp_path / "e.MS")
    make_ms(tmp_path / "e.MS", ntimes=2, nant=3, overwrite=True)
    with _open(tmp_path / "e.MS") as ms:
        assert ms.nrows() == 2 * 3


def test_field_is_above_the_horizon(tmp_path):
    from casacore.measures import measures

    dm = measures()
    dm.do_frame(dm.position("WGS84", f"{msmaker.SITE_LON_DEG}deg", f"{msmaker.SITE_LAT_DEG}deg", "150m"))
    for mjd in (msmaker.START_MJD, msmaker.START_MJD + 0.5):  # at the start, and 12 h later
        dm.do_frame(dm.epoch("UTC", f"{mjd}d"))
        azel = dm.measure(dm.direction("J2000", f"{msmaker.FIELD_RA_DEG}deg", f"{msmaker.FIELD_DEC_DEG}deg"), "AZEL")
        assert np.degrees(azel["m1"]["value"]) > 15.0


def test_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, str(Path(msmaker.__file__)), str(tmp_path / "a.MS"), str(tmp_path / "b.MS"),
         "--nchan", "4", "--ntimes", "2", "--nant", "3", "--corrected-data"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == [str(tmp_path / "a.MS"), str(tmp_path / "b.MS")]
    with _open(tmp_path / "b.MS") as ms:
        assert ms.nrows() == 2 * 3
        assert "CORRECTED_DATA" in ms.colnames()
        assert ms.getcol("DATA").shape[1] == 4


# --- WSClean can image what is made --------------------------------------------------------

def read_fits_image(path):
    """(header dict, 2-D float array) of the first plane of a simple FITS image."""
    raw = Path(path).read_bytes()
    header, offset = {}, 0
    while "END" not in header:
        for i in range(36):
            card = raw[offset + 80 * i: offset + 80 * (i + 1)].decode("ascii")
            key = card[:8].strip()
            if key == "END":
                header["END"] = True
                break
            if card[8:10] == "= ":
                value = card[10:].split("/")[0].strip()
                try:
                    header[key] = float(value)
                except ValueError:
                    header[key] = value.strip("'").strip()
        offset += 2880
    assert header["BITPIX"] == -32
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    data = np.frombuffer(raw, dtype=">f4", count=nx * ny, offset=offset).reshape(ny, nx)
    return header, data


def _wsclean(tmp_path, ms, *extra):
    out = tmp_path / "img"
    out.mkdir(exist_ok=True)
    return subprocess.run(
        [WSCLEAN, "-size", "128", "128", "-scale", "5arcmin", "-niter", "100",
         "-name", str(out / "img"), "-no-update-model-required", *extra, str(ms)],
        capture_output=True, text=True,
    ), out / "img-image.fits"


@needs_wsclean
def test_wsclean_puts_the_source_where_it_was_put(tmp_path):
    dl, dm = 0.02, -0.01  # 0.02 rad east, 0.01 rad south
    ms = make_ms(tmp_path / "o.MS", sources=((dl, dm, 10.0),))
    proc, image = _wsclean(tmp_path, ms)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header, data = read_fits_image(image)
    y, x = np.unravel_index(np.argmax(data), data.shape)
    # SIN projection: pixel offsets are direction cosines; CDELT1 < 0, so east is left.
    expect_x = header["CRPIX1"] - 1 + np.degrees(dl) / header["CDELT1"]
    expect_y = header["CRPIX2"] - 1 + np.degrees(dm) / header["CDELT2"]
    assert abs(x - expect_x) <= 1 and abs(y - expect_y) <= 1, (x, y, expect_x, expect_y)
    assert data.max() > 5.0


@needs_wsclean
def test_wsclean_data_column_corrected_data(tmp_path):
    with_cd = make_ms(tmp_path / "cd.MS", corrected_data=True)
    proc, image = _wsclean(tmp_path, with_cd, "-data-column", "CORRECTED_DATA")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert image.exists()
    without = make_ms(tmp_path / "plain.MS")
    proc, _ = _wsclean(tmp_path, without, "-data-column", "CORRECTED_DATA")
    assert proc.returncode != 0
    assert "CORRECTED_DATA" in proc.stdout + proc.stderr
