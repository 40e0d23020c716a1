"""A NenuFAR-like data tree of real tiny Measurement Sets, with its data_handler.toml.

``build_nenufar_tree(root, ms_source)`` lays out, under ``root/net/``, what
the nodes of NenuFAR's cluster hold (``/net/nodeXXX/data/<level>/...``), so
that ``run_on_file_host_pattern = '/net/(node\\d{3})/'`` works on its paths:

- 4 nodes ``node001``-``node004``; spectral windows SW01-SW03 (2 subbands
  each, SW-specific frequencies: 8 channels at 50, 60, 70 MHz) and the
  composite ``SWALL = ['SW01', 'SW02', 'SW03']``;
- 3 obs_ids with different node maps (``OBS_IDS``);
- level ``L1`` (one MS per subband, ``SB<n>.MS``, 4 channels each, DATA only),
  level ``L2`` (``<SW>.MS``, with CORRECTED_DATA), level ``L3`` (LST bins
  ``<SW>_LST###.MS`` under ``%YEAR%/%MONTH%/%OBS_ID%``, for 20231201_NT04
  SW01 only);
- the N2 obs_id ``20231201_NT04_N2`` on node003 and node004, 5 time chunks per
  SW (``<SW>_T000.MS`` ... ``T004``), interleaved over the two nodes (3 on
  node003, 2 on node004, the last one on node004), plus 2 chunks of its own
  for the composite (``SWALL_T000.MS``, ``SWALL_T001.MS``);
- the N2 obs_id ``20231210_NT04_N2`` on node001 and node002 (nodes given as a
  list), 2 chunks per SW, one on each node;
- the N2 group ``N2GROUP_NT04`` of the two;
- ``data_handler.toml`` (new ``[data_levels.X]`` format) and
  ``data_handler_old.toml`` (old ``[data_level_path]`` format), both with
  tables meant for other tools.

MSs are copied from one made MS per kind (``ms_source(**make_ms_kwargs)``
returns its path, e.g. conftest's session ``ms_cache``), as hard links when the
file system allows (~10 ms an MS, the tree in well under a second): do not
write into the tree's MSs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

NODES = ("node001", "node002", "node003", "node004")
SWS = {"SW01": (100, 101), "SW02": (102, 103), "SW03": (104, 105)}
COMPOSITES = {"SWALL": ["SW01", "SW02", "SW03"]}
OBS_IDS = {
    "20231201_NT04": ["node001", "node002", "node003"],
    "20231202_NT04": ["node002", "node003", "node001"],
    "20231203_NT04": ["node003", "node001", "node002"],
}
N2_A = "20231201_NT04_N2"
N2_B = "20231210_NT04_N2"
N2_OBS_IDS = {
    N2_A: {"nodes": "node[003-004]", "n1_obs_ids": ["20231201_NT04", "20231202_NT04"]},
    N2_B: {"nodes": ["node001", "node002"], "n1_obs_ids": ["20231203_NT04"]},
}
# chunk index -> node
N2_CHUNKS = {
    N2_A: {0: "node004", 1: "node003", 2: "node003", 3: "node003", 4: "node004"},
    N2_B: {0: "node001", 1: "node002"},
}
N2_COMPOSITE_CHUNKS = {N2_A: {0: "node003", 1: "node004"}}  # SWALL_T###.MS
GROUP = "N2GROUP_NT04"
N2_GROUPS = {GROUP: [N2_A, N2_B]}
LST_BINS = {("20231201_NT04", "SW01"): [15, 5]}  # made out of order: the listing must sort

CHAN_WIDTH = 195312.5
SW_NCHAN = 8
SB_NCHAN = 4
SW_FREQ = {"SW01": 50e6, "SW02": 60e6, "SW03": 70e6}
SMALL = {"ntimes": 2, "nant": 3}


def sw_ms_kwargs(sw: str) -> dict:
    return {"nchan": SW_NCHAN, "freq_start": SW_FREQ[sw], "chan_width": CHAN_WIDTH, "corrected_data": True, **SMALL}


def sb_ms_kwargs(sw: str, sb: int) -> dict:
    i = sb - SWS[sw][0]
    return {"nchan": SB_NCHAN, "freq_start": SW_FREQ[sw] + i * SB_NCHAN * CHAN_WIDTH, "chan_width": CHAN_WIDTH,
            **SMALL}


def composite_ms_kwargs() -> dict:
    freqs = [SW_FREQ[sw] + k * CHAN_WIDTH for sw in SWS for k in range(SW_NCHAN)]
    return {"spw_freqs": [freqs], "corrected_data": True, **SMALL}


# the tables both level formats share: spectral windows, node maps, N2 obs_ids and groups
_SW_AND_OBS_IDS = """\
[spectral_windows]
SW01 = [100, 101]
SW02 = [102, 103]
SW03 = [104, 105]
SWALL = ['SW01', 'SW02', 'SW03']

[obs_ids]
"20231201_NT04" = ['node001', 'node002', 'node003']
"20231202_NT04" = ['node002', 'node003', 'node001']
"20231203_NT04" = ['node003', 'node001', 'node002']

[n2_obs_ids]
"20231201_NT04_N2" = {nodes = 'node[003-004]', n1_obs_ids = ['20231201_NT04', '20231202_NT04']}
"20231210_NT04_N2" = {nodes = ['node001', 'node002'], n1_obs_ids = ['20231203_NT04']}

[n2_group]
"N2GROUP_NT04" = ['20231201_NT04_N2', '20231210_NT04_N2']
"""

DATA_HANDLER_NEW = """\
# A NenuFAR data handler (new level format), as nenucal's tools read it.
bp_cal_path = 'bp/%OBS_ID%.h5'
cal_obs_id_patterns = ['*CYGA*']

[worker]
nodes = 'node[001-004]'
max_concurrent = 2

[remote_hosts.nancep]
host = 'nancep.obs-nancay.fr'
level = 'L2'
nodes = 'nancep[5-9]'
data_path = '/data/%LEVEL%/%OBS_ID%'

[obs_calibration_map]
"20231201_NT04" = '20231201_CYGA'

""" + _SW_AND_OBS_IDS + """
[data_levels.L1]
path = '@NET@/%NODE%/data/L1/'
data_column = 'DATA'

[data_levels.L2]
path = '@NET@/%NODE%/data/L2/'
input = 'L1'
avg_freq = 4
dysco_bits = 10
data_column = 'DATA'

[data_levels.L3]
path = '@NET@/%NODE%/data/L3/%YEAR%/%MONTH%/%OBS_ID%/'
input = 'L2'
lst = {start = 0.0, end = 24.0, width = 1.0, longitude = 2.19}
"""

DATA_HANDLER_OLD = """\
# The same data handler in the old level format.
[worker]
nodes = 'node[001-004]'

""" + _SW_AND_OBS_IDS + """
[data_level_path]
L1 = '@NET@/%NODE%/data/L1/'
L2 = '@NET@/%NODE%/data/L2/'
L3 = '@NET@/%NODE%/data/L3/%YEAR%/%MONTH%/%OBS_ID%/'

[l1_to_l2_config.L2]
dppp_config = 'l1_to_l2.parset'

[lst_binning.L3]
start = 0.0
end = 24.0
width = 1.0
longitude = 2.19
"""


@dataclass
class NenufarTree:
    root: Path
    net: Path
    data_handler: Path  # new level format
    data_handler_old: Path  # old level format
    made: list[Path] = field(default_factory=list)

    def node_dir(self, node: str, level: str = "L2") -> Path:
        return self.net / node / "data" / level

    def node_of(self, obs_id: str, sw: str) -> str:
        return OBS_IDS[obs_id][list(SWS).index(sw)]

    def l2(self, obs_id: str, sw: str) -> str:
        return str(self.node_dir(self.node_of(obs_id, sw)) / obs_id / f"{sw}.MS")

    def l1(self, obs_id: str, sw: str) -> list[str]:
        lo, hi = SWS[sw]
        return [str(self.node_dir(self.node_of(obs_id, sw), "L1") / obs_id / f"SB{sb}.MS") for sb in range(lo, hi + 1)]

    def l3(self, obs_id: str, sw: str, lst_bin: int) -> str:
        date = obs_id.split("_")[0]
        d = self.node_dir(self.node_of(obs_id, sw), "L3") / date[:4] / date[4:6] / obs_id
        return str(d / f"{sw}_LST{lst_bin:03d}.MS")

    def chunk(self, n2: str, sw: str, index: int) -> str:
        table = N2_COMPOSITE_CHUNKS if sw in COMPOSITES else N2_CHUNKS
        node = table[n2][index]
        return str(self.node_dir(node) / n2 / f"{sw}_T{index:03d}.MS")

    def chunks(self, n2: str, sw: str) -> list[str]:
        table = N2_COMPOSITE_CHUNKS if sw in COMPOSITES else N2_CHUNKS
        return [self.chunk(n2, sw, i) for i in sorted(table[n2])]


def _default_source(root: Path) -> Callable[..., Path]:
    from msmaker import make_ms

    cache: dict[tuple, Path] = {}
    where = root / ".ms-templates"

    def get(**kwargs) -> Path:
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in cache:
            where.mkdir(parents=True, exist_ok=True)
            cache[key] = Path(make_ms(str(where / f"t{len(cache)}.MS"), **kwargs))
        return cache[key]

    return get


def _copy_ms(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(src, dest, copy_function=os.link)
    except OSError:  # another file system: a real copy
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)


def write_data_handlers(root: Path, net: Path) -> tuple[Path, Path]:
    new = root / "data_handler.toml"
    old = root / "data_handler_old.toml"
    new.write_text(DATA_HANDLER_NEW.replace("@NET@", str(net)), encoding="utf-8")
    old.write_text(DATA_HANDLER_OLD.replace("@NET@", str(net)), encoding="utf-8")
    return new, old


def build_nenufar_tree(root: str | os.PathLike, ms_source: Callable[..., Path] | None = None) -> NenufarTree:
    """Make the tree under ``root`` (see the module docstring) and return where things are."""
    root = Path(root)
    net = root / "net"
    source = ms_source or _default_source(root)
    new, old = write_data_handlers(root, net)
    tree = NenufarTree(root=root, net=net, data_handler=new, data_handler_old=old)

    def put(path: str, kwargs: dict) -> None:
        _copy_ms(Path(source(**kwargs)), Path(path))
        tree.made.append(Path(path))

    for obs_id in OBS_IDS:
        for sw in SWS:
            put(tree.l2(obs_id, sw), sw_ms_kwargs(sw))
            for sb, path in zip(range(SWS[sw][0], SWS[sw][1] + 1), tree.l1(obs_id, sw)):
                put(path, sb_ms_kwargs(sw, sb))
    for (obs_id, sw), bins in LST_BINS.items():
        for b in bins:
            put(tree.l3(obs_id, sw, b), sw_ms_kwargs(sw))
    for n2, chunks in N2_CHUNKS.items():
        for sw in SWS:
            for index in chunks:
                put(tree.chunk(n2, sw, index), sw_ms_kwargs(sw))
    for n2, chunks in N2_COMPOSITE_CHUNKS.items():
        for index in chunks:
            put(tree.chunk(n2, "SWALL", index), composite_ms_kwargs())
    return tree
