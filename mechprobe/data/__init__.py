"""Small text data files shipped with mechprobe.

The files in this package are original texts used as offline defaults and
fallbacks by experiments (prompt passages, sentence sets, sample prose).
"""

import importlib.resources


def read_data_text(name: str) -> str:
    """Return the text of a data file shipped in mechprobe/data (UTF-8).

    Args:
        name: File name inside ``mechprobe/data``, for example
            ``"heads_default.txt"``.

    Returns:
        The full file contents decoded as UTF-8, including the trailing newline.

    Raises:
        FileNotFoundError: If no data file with that name exists.

    Example:
        >>> from mechprobe.data import read_data_text
        >>> read_data_text("replace_default.txt").strip()
        'My sister bought a bicycle at the market on Sunday.'
    """
    return importlib.resources.files("mechprobe.data").joinpath(name).read_text(encoding="utf-8")
