"""Placement options: --device-map, --n-devices, --max-memory, --dtype (issue 14.4).

On this CPU-only machine a device map places every block on the CPU, so a mapped run must give
exactly the arrays of the default run; bfloat16 must give the float32 values within bfloat16's
rounding, and never run a parity check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechprobe.errors import ConfigError
from mechprobe.models.placement import Placement, parse_max_memory, placement_from_options
from tests.helpers import assert_close, assert_one_line_error, run_cli


@pytest.mark.unit
def test_every_bad_option_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        placement_from_options(
            device="cpu", device_map="spread", n_devices="0", max_memory="0:20GiB", dtype="int8"
        )
    names = [name for name, _ in info.value.problems]
    assert names == ["device_map", "device_map", "n_devices", "max_memory", "dtype"], names


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0=20GiB", {0: "20GiB"}),
        ("0=20GiB,1=18.5GB,cpu=64GiB", {0: "20GiB", 1: "18.5GB", "cpu": "64GiB"}),
    ],
)
def test_max_memory_parses(text, expected):
    assert parse_max_memory(text) == expected


@pytest.mark.unit
@pytest.mark.parametrize("text", ["20GiB", "0=20 apples", "gpu0=1GB", "0=1GB,0=2GB", ""])
def test_max_memory_refuses(text):
    with pytest.raises(ValueError):
        parse_max_memory(text)


@pytest.mark.unit
def test_the_manifest_label_tells_placements_apart():
    labels = {
        Placement().label("cpu"),
        Placement(dtype="bfloat16").label("cpu"),
        Placement(device_map="auto").label("cpu"),
        Placement(device_map="balanced", max_memory={0: "1GiB"}).label("cuda"),
        Placement(n_devices=2).label("cuda"),
    }
    assert len(labels) == 5 and Placement().label("cpu") == "cpu"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--device", "cpu", "--device-map", "auto"], ["--device-map", "not both"]),
        (["--n-devices", "2"], ["--n-devices", "2 CUDA devices asked for", "has 0"]),
        (["--max-memory", "0=1GiB"], ["--max-memory", "needs --device-map"]),
        (["--device-map", "auto", "--max-memory", "3=1GiB"], ["--max-memory", "GPU 3"]),
        (["--dtype", "float64"], ["--dtype", "float32, bfloat16, float16"]),
    ],
)
def test_bad_placement_is_one_line(tmp_path, argv, fragments):
    if torch.cuda.is_available():
        pytest.skip("the device-count errors assume a machine without CUDA")
    code, _out, err = run_cli("similarity", "--model", "tiny-gpt2", "--out", str(tmp_path), *argv)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "similarity").exists()


@pytest.mark.integration
@pytest.mark.parametrize("command", ["crosscheck", "heads", "all"])
def test_parity_checks_refuse_half_precision(tmp_path, command):
    argv = [command, "--model", "tiny-gpt2", "--out", str(tmp_path), "--dtype", "bfloat16"]
    code, _out, err = run_cli(*argv)
    assert_one_line_error(code, err, "--dtype bfloat16", "float32 only")


@pytest.mark.integration
def test_a_device_map_on_cpu_changes_nothing_and_bfloat16_rounds(tmp_path, monkeypatch):
    """The real loader end to end: default, --device-map auto, --dtype bfloat16 (tiny-gpt2)."""
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")
    runs = {
        "default": [],
        "mapped": ["--device-map", "auto"],
        "bf16": ["--dtype", "bfloat16", "--device", "cpu"],
    }
    arrays = {}
    for name, extra in runs.items():
        out = tmp_path / name
        argv = ["similarity", "--model", "tiny-gpt2", "--out", str(out), "--n-boot", "50"]
        code, _out, err = run_cli(*argv, *extra)
        assert code == 0, err
        with np.load(out / "similarity" / "arrays.npz") as npz:
            arrays[name] = {k: npz[k] for k in npz.files}
    assert arrays["mapped"].keys() == arrays["default"].keys()
    for key, value in arrays["default"].items():
        np.testing.assert_array_equal(arrays["mapped"][key], value, err_msg=key)
    # bfloat16 keeps 8 bits of mantissa: cosines of its activations within a few 1e-2
    assert_close(arrays["bf16"]["cos_mean_abs"], arrays["default"]["cos_mean_abs"], atol=0.05)
    assert not np.array_equal(arrays["bf16"]["cos_mean_abs"], arrays["default"]["cos_mean_abs"])
    # the manifest records the dtype, so a resumed float32 run does not reuse a bfloat16 result
    code, _out, err = run_cli(
        "similarity", "--model", "tiny-gpt2", "--out", str(tmp_path / "bf16"), "--n-boot", "50",
        "--device", "cpu", "--resume",
    )  # fmt: skip
    assert code == 0 and "[rerun] similarity: device" in err, err
