"""The command line under bad input: one ``error:`` line, a non-zero exit, and nothing on disk lost.

Every case here once ended in a traceback, a silently wrong result, or a lost file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from flowkit_cli.main import main

from flowkit.io import load_model

FAST = ["--epochs", "1", "--transforms", "1", "--hidden", "8", "-q"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_one_line_error(result, exit_code: int = 1, contains: str = "") -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert contains in result.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny model of two named columns, fitted once for the module."""
    folder = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(0)
    np.savetxt(folder / "data.csv", rng.normal(size=(200, 2)) * [1, 10], delimiter=",", header="a,b", comments="")
    result = invoke("fit", folder / "data.csv", "-o", folder / "m.flowkit", "--no-plot", *FAST)
    assert result.exit_code == 0, result.output
    return folder / "m.flowkit"


@pytest.mark.parametrize("arguments", [
    ["sample", "MODEL", "-n", "0"],
    ["sample", "MODEL", "-n", "-5"],
    ["fit", "toy:rings", "--flow", "bogus"],
    ["fit", "toy:rings", "--hidden", "0"],
    ["--threads", "0", "info", "MODEL"],
    ["nonsense"],
])
def test_bad_options_get_one_line(model: Path, arguments: list[str]) -> None:
    result = invoke(*[str(model) if argument == "MODEL" else argument for argument in arguments])
    assert_one_line_error(result, exit_code=2, contains="--help`)")


@pytest.mark.parametrize("command", [
    ["score", "MODEL", "DATA", "-o", "DATA"],
    ["sample", "MODEL", "-o", "MODEL"],
    ["plot", "MODEL", "DATA", "-o", "MODEL"],
    ["fit", "DATA", "-o", "DATA"],
    ["fit", "DATA", "-o", "OUT/m.png"],  # the picture's default name is the model's, with .png
    ["fit", "DATA", "-o", "OUT/m.flowkit", "--checkpoint", "OUT/m.flowkit"],
])
def test_an_output_never_overwrites_an_input_or_another_output(model: Path, tmp_path: Path, command) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n3,5\n4,1\n")
    before = {path: path.read_bytes() for path in (model, data)}
    names = {"MODEL": str(model), "DATA": str(data)}
    result = invoke(*[names.get(part, part.replace("OUT", str(tmp_path))) for part in command])
    assert_one_line_error(result, contains="give another name")
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.csv"]


def test_fit_checks_its_outputs_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("fit", "toy:rings", "--toy-samples", "200", "-o", blocker / "m.flowkit", *FAST)
    assert_one_line_error(result, contains="is not a folder")
    assert "saved" not in result.stdout  # refused before the (wasted) training, not after it


def test_fit_does_not_overwrite_the_checkpoint_of_an_interrupted_run(tmp_path: Path) -> None:
    checkpoint = tmp_path / "m.flowkit.ckpt"
    checkpoint.write_bytes(b"an interrupted run's progress")
    result = invoke("fit", "toy:rings", "--toy-samples", "200", "-o", tmp_path / "m.flowkit", *FAST)
    assert_one_line_error(result, contains="add --resume to continue it, or delete it")
    assert checkpoint.read_bytes() == b"an interrupted run's progress" and not (tmp_path / "m.flowkit").exists()


@pytest.mark.parametrize("device, message", [("bogus", "unknown device"), ("cuda:99", "is not available")])
def test_fit_refuses_unavailable_devices(tmp_path: Path, device: str, message: str) -> None:
    result = invoke("fit", "toy:rings", "--toy-samples", "200", "-o", tmp_path / "m.flowkit", "--device", device,
                    *FAST)
    assert_one_line_error(result, contains=message)


def test_fit_dequantises_repeated_whole_numbers_and_says_so(tmp_path: Path) -> None:
    """Once a warning; now such columns are dequantised inside the model (issue 8), and fit says so."""
    data = tmp_path / "counts.csv"
    rows = [f"{i % 4},{np.sin(i):.6f}" for i in range(100)]
    data.write_text("count,level\n" + "\n".join(rows) + "\n")
    result = invoke("fit", data, "-o", tmp_path / "m.flowkit", "--no-plot", *FAST)
    assert result.exit_code == 0 and (tmp_path / "m.flowkit").is_file()
    assert result.stderr.startswith("note: integer columns, dequantised") and "detected 'count'" in result.stderr
    assert load_model(tmp_path / "m.flowkit")[0].config["preprocessing"] == [{"layer": "dequantize", "columns": [0]}]


def test_damaged_data_files_are_refused_without_running_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "owned",))

    array = np.empty((1, 2), dtype=object)
    array[0] = Payload(), 1.0
    np.save(tmp_path / "pickled.npy", array, allow_pickle=True)
    np.savez(tmp_path / "arrays.npz", x=np.ones((5, 2)))
    (tmp_path / "utf16.csv").write_bytes("a\tb\n1\t2\n3\t5\n".encode("utf-16"))  # readable: the control
    for name, message in (("pickled.npy", "not a readable .npy array"), ("arrays.npz", "zip archive"),
                          ("missing.csv", "no such file")):
        assert_one_line_error(invoke("fit", tmp_path / name, "-o", tmp_path / "m.flowkit", *FAST), contains=message)
    assert not (tmp_path / "owned").exists()
    assert invoke("fit", tmp_path / "utf16.csv", "-o", tmp_path / "m.flowkit", "--no-plot", *FAST).exit_code == 0


def test_score_matches_columns_by_name_and_scores_huge_rows_as_minus_infinity(model: Path, tmp_path: Path) -> None:
    (tmp_path / "ab.csv").write_text("a,b\n0.5,3\n1e300,0\n-2,-1e39\n")
    (tmp_path / "ba.csv").write_text("b,a\n3,0.5\n0,1e300\n-1e39,-2\n")
    scores = {}
    for name in ("ab", "ba"):
        assert invoke("score", model, tmp_path / f"{name}.csv", "-o", tmp_path / f"{name}.out").exit_code == 0
        scores[name] = np.loadtxt(tmp_path / f"{name}.out", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(scores["ab"], scores["ba"])
    # Beyond float32's range the density underflows: -inf ranks the row as the most anomalous,
    # where NaN (what the model computes from an overflowed input) would rank it nowhere.
    assert np.isfinite(scores["ab"][0]) and np.all(scores["ab"][1:] == -np.inf)
    result = invoke("score", model, tmp_path / "ab.csv")
    assert result.stdout.splitlines()[2:] == ["-inf", "-inf"]


def test_sample_streams_the_same_rows_in_batches(model: Path, tmp_path: Path) -> None:
    assert invoke("sample", model, "-n", "250", "--batch-size", "64", "-o", tmp_path / "s.csv").exit_code == 0
    flow, standardizer, _ = load_model(model)
    torch.manual_seed(0)
    expected = standardizer.inverse(flow.sample(250, batch_size=64).double().numpy())
    written = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(written, expected, rtol=1e-8)
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "a,b"


def test_sample_into_a_closed_pipe_is_quiet(model: Path) -> None:
    script = Path(sys.executable).with_name("flowkit")
    process = subprocess.Popen([str(script), "--threads", "1", "sample", str(model), "-n", "200000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"a,b\n"
    process.stdout.close()  # what `flowkit sample ... | head -1` does
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode != 0 and stderr == "", stderr


def test_damaged_models_get_one_line_in_every_command(model: Path, tmp_path: Path) -> None:
    archive = torch.load(model, weights_only=True)
    torch.save({**archive, "metadata": "[1]"}, tmp_path / "metadata.flowkit")
    torch.save({**archive, "dtype": "nope"}, tmp_path / "dtype.flowkit")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    for name in ("metadata", "dtype"):
        damaged = tmp_path / f"{name}.flowkit"
        for command in (["info", damaged], ["sample", damaged, "-n", "2"], ["score", damaged, tmp_path / "data.csv"],
                        ["plot", damaged, tmp_path / "data.csv", "-o", tmp_path / "p.png"]):
            assert_one_line_error(invoke(*command), contains="corrupt flowkit model file")
    assert not (tmp_path / "p.png").exists()


def test_plot_history_refuses_a_history_without_losses(model: Path, tmp_path: Path) -> None:
    archive = torch.load(model, weights_only=True)
    torch.save({**archive, "metadata": '{"history": [{"step": 1}]}'}, tmp_path / "m.flowkit")
    result = invoke("plot", tmp_path / "m.flowkit", "--history", "-o", tmp_path / "h.png")
    assert_one_line_error(result, contains="no loss values")
    assert not (tmp_path / "h.png").exists()


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stopped_sample_leaves_no_temporary_file(model: Path, tmp_path: Path, stop, status: int) -> None:
    output = tmp_path / "s.csv"
    output.write_text("precious")
    script = Path(sys.executable).with_name("flowkit")
    process = subprocess.Popen([str(script), "--threads", "1", "sample", str(model), "-n", "100000000", "-o",
                                str(output)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:  # until rows go into the temporary file
        if any(path.name.endswith(".tmp") and path.stat().st_size > 0 for path in tmp_path.iterdir()):
            break
        time.sleep(0.01)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status
    if stop == signal.SIGINT:  # one line, the shell's status for Ctrl-C, not click's "Aborted!"
        assert stderr.decode() == "error: interrupted\n"
    assert [path.name for path in tmp_path.iterdir()] == ["s.csv"] and output.read_text() == "precious"
