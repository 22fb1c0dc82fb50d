"""Local input files (texts, class files, labels, sentences): bounded, and decoded or named.

Every local input is read through `read_local`, with a size cap like the download cap (32 MiB
by default, 256 MiB for a JSONL labels file; ``--max-download-mb`` where a command has it, or
``$MECHPROBE_MAX_INPUT_MB`` for every local input): a file over it, or a device such as
``/dev/zero``, is refused in one line before it can fill the memory. `decode_text` decodes
UTF-8 (a BOM is dropped), UTF-16 and UTF-32 (with a BOM, or UTF-16 recognised by its zero
bytes) and names binary content instead of letting it through as garbage.

Example:
    >>> _ = Path("u16.txt").write_bytes("It is not here.".encode("utf-16"))
    >>> decode_text(read_local("u16.txt", "text file"), "u16.txt", "text file")
    'It is not here.'
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from mechprobe.corpus.download import DEFAULT_MAX_BYTES
from mechprobe.errors import MechprobeError

__all__ = ["LABELS_MAX_BYTES", "MAX_INPUT_ENV", "decode_text", "input_cap", "read_local"]

#: Environment variable raising the cap on local input files, in MB.
MAX_INPUT_ENV = "MECHPROBE_MAX_INPUT_MB"
#: The cap on a labels file: JSONL repeats each record's text, so it is larger than a text.
LABELS_MAX_BYTES = 256 * 1024 * 1024
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def input_cap(max_bytes: int | None = None) -> int:
    """The cap on a local input, in bytes: the larger of ``max_bytes`` and the environment's.

    Example:
        >>> input_cap() == DEFAULT_MAX_BYTES
        True
    """
    cap = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    raw = os.environ.get(MAX_INPUT_ENV, "").strip()
    if not raw:
        return cap
    try:
        env = float(raw)
    except ValueError:
        raise MechprobeError(f"{MAX_INPUT_ENV}: expected a number of MB, got {raw!r}") from None
    if not 0 < env < 2**40:
        raise MechprobeError(f"{MAX_INPUT_ENV}: must be a positive number of MB, got {raw!r}")
    return max(cap, int(env * 2**20))


def read_local(path: str | os.PathLike[str], what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a local input file, at most `input_cap` of them.

    Args:
        path: The file (a regular file or a pipe; devices are refused).
        what: What it is, for messages (``"text file"``, ``"classes file"``).
        max_bytes: The cap (default: the download cap, 32 MiB, or ``$MECHPROBE_MAX_INPUT_MB``).

    Raises:
        MechprobeError: ``<path>: <cause>`` -- unreadable, a directory or device, over the cap.

    Example:
        >>> read_local("/dev/zero", "text file")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: /dev/zero: cannot read text file: a device, not a file
    """
    cap = input_cap(max_bytes)
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                raise MechprobeError(f"{path}: cannot read {what}: a device, not a file")
            data = fh.read(cap + 1)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise MechprobeError(f"{path}: cannot read {what}: {why}") from None
    if len(data) > cap:
        raise MechprobeError(
            f"{path}: the {what} is larger than the {cap / 2**20:g} MiB cap on local inputs; "
            f"raise it with --max-download-mb (probe, negation) or {MAX_INPUT_ENV}=<MB>"
        )
    return data


def _utf16_without_bom(data: bytes) -> str | None:
    """``"utf-16-le"``/``"utf-16-be"`` when every other byte of the start is zero, else None."""
    head = data[:4096]
    if len(head) < 4 or len(head) % 2:
        head = head[: len(head) - len(head) % 2]
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def decode_text(
    data: bytes, path: str | os.PathLike[str], what: str, errors: str = "strict"
) -> str:
    r"""Decode a local input: UTF-8, or UTF-16/32 with a BOM or recognised; binary is refused.

    Args:
        data: The file's bytes.
        path: Its name, for messages.
        what: What it is, for messages.
        errors: For UTF-8 that does not decode: ``"strict"`` refuses it, ``"replace"`` keeps it.

    Raises:
        MechprobeError: ``<path>: the <what> is binary ...`` or not valid in its encoding.

    Example:
        >>> decode_text(b"\x89PNG\r\n\x1a\n\x00\x00", "x.png", "text file")
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: x.png: the text file is binary (a NUL byte at ...
    """
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    encoding = encoding or _utf16_without_bom(data)
    if encoding is not None:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise MechprobeError(f"{path}: the {what} is not valid {encoding}: {exc}") from None
    if (nul := data.find(b"\x00")) >= 0:
        raise MechprobeError(
            f"{path}: the {what} is binary (a NUL byte at offset {nul}), not text; give a UTF-8 "
            "or UTF-16 text file"
        )
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise MechprobeError(f"{path}: the {what} is not UTF-8 text: {exc}") from None
