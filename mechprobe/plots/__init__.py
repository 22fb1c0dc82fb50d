"""Plot functions: build and return plotly figures from arrays; they compute nothing, show nothing.

`mechprobe.plots.export` writes figures to disk (HTML always, PNG when a browser is available).
"""
