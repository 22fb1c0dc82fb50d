"""Where mechprobe keeps converted weights, tokenizers and downloads.

The cache directory is ``$MECHPROBE_CACHE`` if set, else the platform's user cache directory
(``~/.cache/mechprobe`` on Linux).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory inside mechprobe's cache.

    Example:
        >>> cache_dir("tokenizers").name
        'tokenizers'
    """
    root = os.environ.get("MECHPROBE_CACHE")
    if root is None:
        import platformdirs

        root = platformdirs.user_cache_dir("mechprobe")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks.

    Example:
        >>> len(sha256_file(__file__))
        64
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
