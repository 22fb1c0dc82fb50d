"""The runner: it owns a run of one or more experiment steps into an output directory.

`mechprobe.runner.run` checks the output directory and every setting before computing anything,
takes the directory's lock (`mechprobe.runner.lock`), reuses a step only when its manifest
(`mechprobe.runner.manifest`) matches the request exactly, writes each step as a whole
(`mechprobe.runner.steps`) and rebuilds the report from what is on disk.
"""
