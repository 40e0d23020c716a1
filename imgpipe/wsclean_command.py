"""Turn ``[wsclean]`` values into WSClean argv words: small pure functions, no I/O.

Rules (driven by the option table in ``wsclean_options``):

- ``true`` on a flag -> ``-key``; ``false`` or ``''`` -> omitted (done in config).
- a number -> one word.
- a string on a single-value option (path, list, ...) -> one word, whatever it
  holds (spaces included).
- a string on a multi-value option (``size = '1024 1024'``, ``weight = 'briggs 0'``,
  also the multi-path ``restore = 'res.fits model.fits out.fits'``) -> split on
  white space into separate words; a TOML list keeps a path with spaces whole.
- a TOML list on a comma-list option (``pol = ['xx', 'yy']``) -> one word ``xx,yy``;
  on a multi-value option (``size = [1024, 1024]``) -> separate words.
"""

from __future__ import annotations

from typing import Any

from .errors import ImgpipeError
from .wsclean_options import WscleanOption, check_words, example


def _word(value: Any) -> str:
    return str(value)


def _toml(value: Any) -> str:
    """A value as the user wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    return repr(value)


def _nargs_text(opt: WscleanOption) -> str:
    lo, hi = opt.nargs
    if lo == hi:
        return f"{lo} value{'s' if lo != 1 else ''}"
    return f"{lo} to {hi} values"


POLARIZATIONS = "i, q, u, v, xx, xy, yx, yy, rr, rl, lr, ll"


def pol_problem(value: str) -> str | None:
    """Why WSClean 3.1 would image nothing useful with ``-pol value``, or None.

    ``-dry-run`` does not parse ``-pol``, and WSClean 3.1 skips letters that are
    no polarization: ``-pol zz`` (or ``banana``) images nothing and exits 0, and
    ``-pol zz,i`` images I alone. So imgpipe checks the word itself, the way
    WSClean reads it: i, q, u, v alone; x/y and r/l in pairs; ',' and spaces between.
    """
    text = value.lower()
    pos, found = 0, False
    while pos < len(text):
        c = text[pos]
        if c in ", ":
            pos += 1
        elif c in "iquv":
            found, pos = True, pos + 1
        elif c in "xyrl":
            pair = "xy" if c in "xy" else "rl"
            if pos + 1 < len(text) and text[pos + 1] in pair:
                found, pos = True, pos + 2
            else:
                return (f"-pol {value!r}: '{c}' must be followed by '{pair[0]}' or '{pair[1]}' "
                        f"(polarizations: {POLARIZATIONS})")
        else:
            return (f"-pol {value!r}: {c!r} is not a polarization; WSClean 3.1 does not reject it but "
                    f"skips it (with nothing left it images nothing and exits 0); "
                    f"use {POLARIZATIONS}, e.g. 'I' or 'xx,yy'")
    if not found:
        return f"-pol {value!r} names no polarization (use {POLARIZATIONS})"
    return None


def option_words(opt: WscleanOption, value: Any) -> list[str]:
    """The argv words that follow ``-name`` for this option and TOML value (value already checked)."""
    lo, hi = opt.nargs
    if opt.kind == "flag":
        return []
    if isinstance(value, list):
        items = [_word(v) for v in value]
        if opt.kind == "list" or hi == 1:
            return [",".join(items)]
        return items
    if isinstance(value, str):
        if hi == 1:
            return [value]
        return value.split()
    return [_word(value)]


def check_value(opt: WscleanOption, value: Any, where: str) -> None:
    """Raise ImgpipeError when ``value`` cannot be given to option ``opt``."""
    lo, hi = opt.nargs
    if opt.kind == "flag":
        if value is not True:
            raise ImgpipeError(
                f"-{opt.name} is a flag without a value, got {value!r}",
                where=where,
                hint=f"write {opt.name} = true to pass -{opt.name}, or false to leave it out",
            )
        return
    if value is True:
        raise ImgpipeError(
            f"-{opt.name} needs {_nargs_text(opt)}, got true",
            where=where,
            hint=f"give its value; wsclean --help says: -{opt.name}: {opt.help}",
        )
    if isinstance(value, dict):
        raise ImgpipeError(f"-{opt.name} takes {_nargs_text(opt)}, not a table", where=where)
    if isinstance(value, list):
        if not value or any(isinstance(v, (list, dict, bool)) for v in value):
            raise ImgpipeError(
                f"-{opt.name}: a list must hold plain numbers or strings, got {value!r}", where=where
            )
        if opt.kind != "list" and hi == 1:
            raise ImgpipeError(
                f"-{opt.name} takes a single value, got the list {value!r}",
                where=where,
                hint="give one value; only comma-list options (pol, spws, multiscale-scales, ...) "
                "and options taking several values (size, shift, ...) accept a TOML list",
            )
    for word in option_words(opt, value):
        if any(ord(c) < 32 and c != "\t" for c in word):
            raise ImgpipeError(f"-{opt.name}: value {value!r} contains a control character (newline?)", where=where)
    words = option_words(opt, value)
    if not (lo <= len(words) <= hi):
        raise ImgpipeError(
            f"-{opt.name} takes {_nargs_text(opt)}, got {len(words)}: {value!r}",
            where=where,
            hint=f"write the values in one string, separated by spaces, or as a TOML list; "
            f"wsclean --help says: -{opt.name}: {opt.help}",
        )
    fault = check_words(opt, words)
    if fault:
        word, what = fault
        got = _toml(value) if len(words) == 1 else f"{word!r} in {_toml(value)}"
        raise ImgpipeError(
            f"-{opt.name} takes {what}; got {got}",
            where=where,
            hint=f"e.g. {opt.name} = {example(opt)}; wsclean --help says: -{opt.name}: {opt.help}",
        )
    if opt.name == "pol":
        why = pol_problem(words[0])
        if why:
            raise ImgpipeError(why, where=where, hint="e.g. pol = 'I' or pol = 'xx,yy'")
