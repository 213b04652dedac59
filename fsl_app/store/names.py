"""Validation of project and class names, and the safe file and folder names derived from them.

Names are what people type: unicode and spaces are welcome. They are normalised (NFC, surrounding whitespace
stripped) and refused only when they could break a path, a terminal or a comparison: empty, dots only, ``/`` or
``\\``, control characters, bidirectional overrides, longer than :data:`MAX_NAME_LENGTH`. Two names that differ only
by case are the same name (:func:`name_key`), so exporting to a case-insensitive file system never merges classes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .errors import InvalidNameError

MAX_NAME_LENGTH = 100
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
_UNSAFE_FILE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


def normalize_name(name: str) -> str:
    """NFC-normalise and strip surrounding whitespace, so visually equal names compare equal."""
    return unicodedata.normalize("NFC", str(name)).strip()


def name_key(name: str) -> str:
    """The identity of a name: normalised and case-folded ("Cat" and "cat" are the same class)."""
    return normalize_name(name).casefold()


def validate_class_name(name: str) -> str:
    """Return the normalised class name or raise :class:`InvalidNameError` saying how to fix it."""
    return _validate(name, "class")


def validate_project_name(name: str) -> str:
    """Like :func:`validate_class_name`; a project name may also not contain ``..`` anywhere."""
    cleaned = _validate(name, "project")
    if ".." in cleaned:
        raise InvalidNameError(f"project name {cleaned!r} contains '..'. Use single dots, e.g. "
                               f"{cleaned.replace('..', '.')!r}.")
    return cleaned


def _validate(name: object, kind: str) -> str:
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be text, got {type(name).__name__}.")
    cleaned = normalize_name(name)
    if not cleaned:
        raise InvalidNameError(f"{kind} name is empty. Type a name, e.g. 'healthy leaf'.")
    if set(cleaned) == {"."}:
        raise InvalidNameError(f"{kind} name {cleaned!r} is only dots. Use letters or digits in the name.")
    for separator in ("/", "\\"):
        if separator in cleaned:
            suggestion = cleaned.replace(separator, "-")
            raise InvalidNameError(f"{kind} name {cleaned!r} contains {separator!r}, which would split a folder "
                                   f"path. Use another character, e.g. {suggestion!r}.")
    bad = [char for char in cleaned if _is_forbidden_char(char)]
    if bad:
        codes = ", ".join(sorted({f"U+{ord(char):04X}" for char in bad}))
        raise InvalidNameError(f"{kind} name {cleaned!r} contains control characters ({codes}). "
                               "Retype the name without tabs, line breaks or invisible characters.")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{kind} name is {len(cleaned)} characters long; the limit is {MAX_NAME_LENGTH}. "
                               "Use a shorter name.")
    return cleaned


def _is_forbidden_char(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def printable(text: str) -> str:
    """``text`` safe to print on a terminal or a page: control, format (bidi, zero-width), line-separator and
    undecodable (surrogate-escaped) characters become visible escapes (``\\n``, ``\\x1b``, ``\\u202e``);
    everything else, unicode included, is kept."""
    return "".join(_escaped(char) if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES and char != _ZWJ
                   else char for char in str(text))


_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ZWJ = "\u200d"  # joins emoji sequences; kept so they still render


def _escaped(char: str) -> str:
    escaped = char.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return escaped if escaped != char else f"\\u{ord(char):04x}"


def slugify(name: str, *, max_length: int = 40, fallback: str = "project") -> str:
    """ASCII lowercase slug for a folder name: 'Wheat rust (2024)' -> 'wheat-rust-2024'."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:max_length].strip("-")
    return slug or fallback


def project_folder_name(name: str) -> str:
    """Folder for a project: slug + 8 hex digits of the name key, unique and safe on every file system."""
    digest = hashlib.sha256(name_key(name).encode("utf-8")).hexdigest()[:8]
    return f"{slugify(name)}-{digest}"


def safe_file_name(name: str, *, fallback: str = "unnamed", max_length: int = 120) -> str:
    """A file or folder name valid on Windows, macOS and Linux; unicode is kept, reserved characters become '_'."""
    cleaned = _UNSAFE_FILE_CHARS.sub("_", unicodedata.normalize("NFC", name))
    cleaned = "".join("_" if _is_forbidden_char(char) else char for char in cleaned)
    cleaned = cleaned.strip().rstrip(". ")[:max_length].rstrip(". ")
    if not cleaned or set(cleaned) == {"."}:
        return fallback
    if cleaned.split(".")[0].lower() in _WINDOWS_RESERVED:
        cleaned = f"_{cleaned}"
    return cleaned
