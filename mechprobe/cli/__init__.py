"""The ``mechprobe`` command: its parser is generated from the experiment specs."""
