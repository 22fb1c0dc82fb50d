"""Plot functions: build and return plotly figures from arrays; they compute nothing, show nothing.

One module per experiment (``mechprobe.plots.<experiment>``), each with ``figures(result)`` that
returns ``{figure name: plotly Figure or None}`` for the figures its experiment's spec declares;
`mechprobe.plots.theme` gives every figure the same look; `mechprobe.plots.export` writes them.
"""
