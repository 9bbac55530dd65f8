"""Per-token detectors of low-quality text: code-switching (script changes) and repetition
(n-gram loops). Each returns a boolean mask over a document's token ids.

**Script of a character.** Python's ``unicodedata`` has no Script property (UAX #24), so it is
read off the character's name: letters (category L) and marks (M) take the first word of their
name with ``FULLWIDTH``/``HALFWIDTH`` dropped and ``CJK`` read as ``HAN`` (``LATIN SMALL LETTER
A`` -> Latin, ``CJK UNIFIED IDEOGRAPH-8428`` -> Han, ``CYRILLIC ...``, ``ARABIC ...``,
``HIRAGANA ...``, ``HANGUL SYLLABLE ...``). Everything else - digits, punctuation, spaces,
symbols, combining marks named ``COMBINING``, the replacement character of an incomplete byte
sequence - is *Common*.

**Script of a token.** Qwen's tokenizer is byte-level: a CJK character (3 UTF-8 bytes) may be
split over two or three byte tokens that each decode to U+FFFD alone. So a token's text is not
decoded alone: the document's bytes are decoded once and each character is given to every token
whose bytes overlap it; a byte token thus joins the script of the character it helps spell. A
token's script is the most frequent non-Common script of its characters (the first one on a
tie); a token with none is Common and takes the script of the nearest non-Common token before
it (after it, at the start of a document) - the way UAX #24 resolves Common characters into the
surrounding run. A document with no non-Common token is all Common.

**Code-switching.** The document's dominant script is the script of most of its tokens (after
resolution; first seen wins a tie). A token is flagged when its script is not the dominant one.

**Repetition.** With n-grams of ``n`` tokens (overlapping, counted left to right), an occurrence
of an n-gram that is at least its ``repeats``-th occurrence flags its ``n`` tokens; with
``window`` set, only earlier occurrences starting less than ``window`` tokens before it count.
So ``a b c d a b c d a b c d`` (n 4, repeats 3) flags exactly the last four tokens.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import cache

import numpy as np

COMMON = "Common"
CODE_SWITCHING = "code-switching"
REPETITION = "repetition"
DETECTORS = (CODE_SWITCHING, REPETITION)


@cache
def char_script(char: str) -> str:
    """The script of one character (see the module docstring): ``"Latin"``, ``"Han"``, ...
    or ``"Common"``."""
    if unicodedata.category(char)[0] not in "LM":
        return COMMON
    words = unicodedata.name(char, "").split()
    while words and words[0] in ("FULLWIDTH", "HALFWIDTH"):
        words = words[1:]
    if not words or words[0] == "COMBINING":
        return COMMON
    return "Han" if words[0] == "CJK" else words[0].capitalize()


def token_bytes(tokenizer, ids: Sequence[int]) -> list[bytes]:
    """The bytes each token stands for. A byte-level BPE token string maps back to bytes
    through GPT-2's byte-to-unicode table; added (special) tokens are their UTF-8 text."""
    decoder = _byte_decoder()
    special = set(getattr(tokenizer, "all_special_ids", []))
    out = []
    for piece, i in zip(tokenizer.convert_ids_to_tokens(list(ids)), ids, strict=True):
        if i in special or any(c not in decoder for c in piece):
            out.append(tokenizer.decode([i]).encode("utf-8"))
        else:
            out.append(bytes(decoder[c] for c in piece))
    return out


@cache
def _byte_decoder() -> dict[str, int]:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    return {v: k for k, v in bytes_to_unicode().items()}


def token_characters(pieces: Sequence[bytes]) -> list[list[str]]:
    """For each token, the characters whose UTF-8 bytes overlap its bytes (a character spread
    over three byte tokens belongs to all three). Bytes that do not decode are U+FFFD."""
    starts = np.cumsum([0, *map(len, pieces)])
    data = b"".join(pieces)
    chars: list[list[str]] = [[] for _ in pieces]
    pos = 0
    while pos < len(data):
        char, width = _next_char(data, pos)
        first = int(np.searchsorted(starts, pos, side="right")) - 1
        last = int(np.searchsorted(starts, pos + width - 1, side="right")) - 1
        for t in range(first, last + 1):
            chars[t].append(char)
        pos += width
    return chars


def _next_char(data: bytes, pos: int) -> tuple[str, int]:
    for width in (1, 2, 3, 4):
        try:
            return data[pos:pos + width].decode("utf-8"), width
        except UnicodeDecodeError:
            continue
    return "\ufffd", 1


def token_scripts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's resolved script (module docstring)."""
    own = []
    for chars in token_characters(token_bytes(tokenizer, ids)):
        counts = Counter(s for s in map(char_script, chars) if s != COMMON)
        own.append(counts.most_common(1)[0][0] if counts else COMMON)
    return _resolve_common(own)


def _resolve_common(scripts: list[str]) -> list[str]:
    out, previous = list(scripts), None
    for i, script in enumerate(scripts):
        if script == COMMON:
            if previous is not None:
                out[i] = previous
        else:
            previous = script
    following = next((s for s in scripts if s != COMMON), COMMON)
    for i, script in enumerate(scripts):  # a document's leading Common tokens
        if script != COMMON:
            break
        out[i] = following
    return out


def dominant_script(scripts: Sequence[str]) -> str:
    """The script of most tokens; the first seen wins a tie (``Counter`` keeps first-seen
    order among equal counts)."""
    return Counter(scripts).most_common(1)[0][0] if scripts else COMMON


def code_switching_mask(tokenizer, ids: Sequence[int], dominant: str | None = None
                        ) -> np.ndarray:
    """True where a token's script is not the document's dominant one (or ``dominant``)."""
    scripts = token_scripts(tokenizer, ids)
    dominant = dominant or dominant_script(scripts)
    return np.array([s != dominant for s in scripts], dtype=bool)


def repetition_mask(ids: Sequence[int], n: int = 4, repeats: int = 3,
                    window: int | None = None) -> np.ndarray:
    """True on the tokens of every n-gram occurrence that is at least its ``repeats``-th
    (counting only occurrences starting within ``window`` tokens before, when given)."""
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be at least 1, got n={n}, repeats={repeats}")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    ids = [int(i) for i in ids]
    mask = np.zeros(len(ids), dtype=bool)
    seen: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for start in range(len(ids) - n + 1):
        gram = tuple(ids[start:start + n])
        earlier = seen[gram]
        if window is not None:
            earlier[:] = [s for s in earlier if s > start - window]
        earlier.append(start)
        if len(earlier) >= repeats:
            mask[start:start + n] = True
    return mask


def detect(name: str, tokenizer, ids: Sequence[int], *, n: int = 4, repeats: int = 3,
           window: int | None = None) -> np.ndarray:
    """The mask of detector ``name`` (``"code-switching"`` or ``"repetition"``)."""
    if name == CODE_SWITCHING:
        return code_switching_mask(tokenizer, ids)
    if name == REPETITION:
        return repetition_mask(ids, n=n, repeats=repeats, window=window)
    raise ValueError(f"unknown detector {name!r}: expected one of {', '.join(DETECTORS)}")
