"""The ``mechprobe`` command: a thin shell over the experiment functions."""
