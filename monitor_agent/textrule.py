"""The one text rule of agent and hub: which characters no report string may carry.

Agent and hub import this module (it travels in the agent zipapp: stdlib only, Python 3.9),
so what the agent cleans and what the hub checks can never drift apart again (security
review N2: the agent passed U+200B through, the hub refused the whole report, the host went
"offline"). ``tests/test_textrule.py`` runs one table of characters against both sides.

Unsafe are:

* C0 controls except TAB and LF (U+0000-U+0008, U+000B-U+001F), DEL and the C1 controls
  (U+007F-U+009F): terminal escapes, forged lines, NUL;
* the bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), the Arabic letter
  mark U+061C and the LRM/RLM marks U+200E/U+200F, which make ``ab\\u202egnp.exe`` display as
  ``abexe.png``;
* invisible characters that make look-alike names: ZERO WIDTH SPACE U+200B, WORD JOINER U+2060,
  BOM / ZERO WIDTH NO-BREAK SPACE U+FEFF, and the LINE/PARAGRAPH SEPARATORs U+2028/U+2029;
* lone surrogates (U+D800-U+DFFF): not Unicode text at all; they reach Python strings through
  ``surrogateescape`` decoding of file names and ``/proc`` bytes, and through ``\\ud800`` in JSON.

Kept on purpose: TAB and LF (multi-line error text), ZWNJ/ZWJ U+200C/U+200D (needed to spell
Persian, Indic scripts and emoji sequences) and every printable letter of any script.

:data:`REPLACEMENT` (U+FFFD) stands in for each unsafe character, one for one, so a cleaned
string is exactly as long as the original and the place of the damage stays visible.
"""

import re

REPLACEMENT = "\ufffd"

# The character class of the rule (see the module docstring); the surrogate range makes the
# same search find lone surrogates.
UNSAFE_CLASS = ("\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029"
                "\u202a-\u202e\u2060\u2066-\u2069\ufeff\ud800-\udfff")
UNSAFE = re.compile("[" + UNSAFE_CLASS + "]")


def first_unsafe(text):
    """The first unsafe character of the string ``text`` (a one-character str), or None."""
    match = UNSAFE.search(text)
    return match.group() if match else None


def describe(char):
    """``U+200B``-style name of one character, for error messages and logs."""
    return f"U+{ord(char):04X}"


def clean(text):
    """``text`` (a str) with each unsafe character replaced by U+FFFD; same length."""
    return UNSAFE.sub(REPLACEMENT, text)


def clean_tree(value):
    """``value`` (decoded JSON: dict, list, str, number, bool, None) with every string inside
    it, keys included, passed through :func:`clean`. Returns a new structure; never raises."""
    if isinstance(value, str):
        return UNSAFE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {clean_tree(k) if isinstance(k, str) else k: clean_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_tree(v) for v in value]
    return value
