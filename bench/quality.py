"""What the quality gate costs on the planning machine: CPU to measure one job's main image
(and its residual and dirty image) of 2048 x 2048 pixels, as imgpipe/quality.py does when a
job lands. Target (issue 26): <= 0.2 s of CPU an image.

The images are FITS files of WSClean's layout (4 axes, float32), noise plus point sources,
written here with astropy; the baseline is reading the same three files with astropy and
taking numpy's std of each (the least any check must do). Rounds interleave the two arms.

    .venv/bin/python bench/quality.py [--size 2048] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from imgpipe.quality import measure  # noqa: E402


def write_images(folder: str, size: int) -> str:
    rng = np.random.default_rng(0)
    for kind, scale in (("image", 1.0), ("residual", 1.0), ("dirty", 3.0)):
        data = rng.normal(0, 0.01 * scale, (1, 1, size, size)).astype(np.float32)
        data[0, 0, size // 2, size // 2] = 10.0
        header = fits.Header()
        for k, v in (("CTYPE1", "RA---SIN"), ("CTYPE2", "DEC--SIN"), ("CTYPE3", "FREQ"), ("CTYPE4", "STOKES"),
                     ("CDELT2", 0.01), ("CRVAL3", 5e7), ("CDELT3", 3e6), ("BMAJ", 0.05), ("BMIN", 0.03),
                     ("BPA", 20.0), ("BUNIT", "JY/BEAM")):
            header[k] = v
        fits.writeto(os.path.join(folder, f"img-{kind}.fits"), data, header, overwrite=True)
    return os.path.join(folder, "img-image.fits")


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def baseline(image: str) -> None:
    for kind in ("image", "residual", "dirty"):
        np.asarray(fits.getdata(image.replace("-image", f"-{kind}")), dtype=np.float32).std()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        image = write_images(folder, args.size)
        measure(image), baseline(image)  # (warm: the page cache, the imports)
        ours, base = [], []
        for _ in range(args.rounds):
            ours.append(cpu(lambda: measure(image)))
            base.append(cpu(lambda: baseline(image)))
    ratio = [a / b for a, b in zip(ours, base)]
    med = statistics.median(ours)
    print(f"measure of a {args.size}x{args.size} image (+ residual, dirty): CPU {med:.3f} s "
          f"({min(ours):.3f}-{max(ours):.3f}) over {args.rounds} rounds; "
          f"{'PASS' if med <= 0.2 else 'MISS'} (target <= 0.2 s)")
    print(f"against reading the three files and one std each: {statistics.median(ratio):.2f}x "
          f"({min(ratio):.2f}-{max(ratio):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
