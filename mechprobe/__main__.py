"""``python -m mechprobe``: the same as the ``mechprobe`` command."""

from mechprobe.cli.main import entry

entry()
