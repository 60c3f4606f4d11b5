"""The command line end to end: files written, exit codes, one-line errors, nothing on disk lost."""

from __future__ import annotations

import re
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

from flowkit.data.toys import make_toy
from flowkit.flow import Flow
from flowkit.io import load_model

MINIBOONE = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "miniboone"
FAST = ["--epochs", "3", "--transforms", "2", "--hidden", "16", "--batch-size", "128", "-q"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fit")
    data = folder / "moons.csv"
    values = make_toy("two_moons", 600, seed=1) * [1.0, 50.0] + [3.0, -100.0]  # units that need scaling
    np.savetxt(data, values, delimiter=",", header="width,height", comments="")
    result = run("fit", str(data), "-o", str(folder / "moons.flowkit"), *FAST)
    assert result.exit_code == 0, result.output
    return folder / "moons.flowkit", data


def test_fit_writes_model_and_picture(fitted) -> None:
    model, _ = fitted
    assert model.is_file() and not Path(f"{model}.ckpt").exists()
    assert model.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flow, standardizer, metadata = load_model(model)
    assert standardizer.columns == ["width", "height"] and metadata["rows"] == 600
    assert metadata["steps"] > 0 and np.isfinite(metadata["validation_nll"])


def test_sample_writes_rows_in_data_units(fitted, tmp_path: Path) -> None:
    model, _ = fitted
    result = run("sample", str(model), "-n", "500", "-o", str(tmp_path / "s.csv"), "--seed", "3")
    assert result.exit_code == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "width,height" and len(lines) == 501
    samples = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert abs(np.median(samples[:, 1]) + 100) < 40, "samples must come back in the data's units"


def test_sample_compiled_draws_full_batches(tmp_path: Path, monkeypatch) -> None:
    """--compile compiles the autoregressive steps once and draws every batch at one size (a short
    last batch drawn full and cut): the full batches are the uncompiled command's draws."""
    data = tmp_path / "moons.csv"
    np.savetxt(data, make_toy("two_moons", 400, seed=2), delimiter=",")
    assert run("fit", str(data), "--flow", "maf", "-o", str(tmp_path / "m.flowkit"), "--no-plot", *FAST).exit_code == 0
    backends = []
    real = Flow.compile_sampling
    monkeypatch.setattr(Flow, "compile_sampling",
                        lambda flow, backend="inductor": backends.append(backend) or real(flow, "eager"))
    common = ["sample", str(tmp_path / "m.flowkit"), "-n", "500", "--batch-size", "200", "--seed", "4"]
    assert run(*common, "-o", str(tmp_path / "plain.csv")).exit_code == 0
    assert run(*common, "--compile", "-o", str(tmp_path / "compiled.csv")).exit_code == 0
    plain, compiled = (np.loadtxt(tmp_path / name, delimiter=",", skiprows=1) for name in ("plain.csv", "compiled.csv"))
    assert backends == ["inductor"] and plain.shape == compiled.shape == (500, 2)
    np.testing.assert_allclose(compiled[:400], plain[:400], rtol=1e-6, atol=1e-6)


def test_pictures_take_the_format_their_name_asks_for(fitted, tmp_path: Path) -> None:
    model, data = fitted
    assert run("plot", str(model), str(data), "-o", str(tmp_path / "fit.pdf")).exit_code == 0
    assert (tmp_path / "fit.pdf").read_bytes()[:5] == b"%PDF-"
    assert run("plot", str(model), "--history", "-o", str(tmp_path / "curve.svg")).exit_code == 0
    assert b"<svg" in (tmp_path / "curve.svg").read_bytes()[:1000]
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "m.flowkit"), "--plot",
                                       str(tmp_path / "m.xyz"), *FAST])
    assert result.exit_code == 1 and "cannot write a .xyz picture" in result.output
    assert not (tmp_path / "m.flowkit").exists(), "refused before fitting, not after"


def test_score_matches_the_model_density(fitted, tmp_path: Path) -> None:
    model, data = fitted
    assert run("score", str(model), str(data), "-o", str(tmp_path / "scores.csv")).exit_code == 0
    scores = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    flow, standardizer, _ = load_model(model)
    values = np.loadtxt(data, delimiter=",", skiprows=1)
    with torch.no_grad():
        expected = flow.log_prob(torch.as_tensor(standardizer.transform(values), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(scores, expected - np.log(values.std(0)).sum(), rtol=1e-5, atol=1e-4)


def test_info_and_plots(fitted, tmp_path: Path) -> None:
    model, data = fitted
    result = run("info", str(model))
    assert result.exit_code == 0 and "nsf" in result.output and "width, height" in result.output
    assert run("plot", str(model), str(data), "-o", str(tmp_path / "p.png")).exit_code == 0
    assert run("plot", str(model), "--layers", "-o", str(tmp_path / "l.png")).exit_code == 0
    assert run("plot", str(model), "--history", "-o", str(tmp_path / "h.png")).exit_code == 0
    for name in ("p.png", "l.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG" and (tmp_path / name).stat().st_size > 1000
    assert re.search(r"^history: +3 records", result.output, re.MULTILINE)


def test_history_is_in_data_units(fitted) -> None:
    model, _ = fitted
    _, standardizer, metadata = load_model(model)
    last = metadata["history"][-1]
    assert len(metadata["history"]) == 3 and last["epoch"] == 3
    best = min(row["validation_loss"] for row in metadata["history"])
    assert best == pytest.approx(metadata["validation_nll"])


def test_fit_a_named_toy(tmp_path: Path) -> None:
    result = run("fit", "toy:eight_gaussians", "--toy-samples", "500", "-o", str(tmp_path / "m.flowkit"),
                 "--no-plot", *FAST)
    assert result.exit_code == 0 and (tmp_path / "m.flowkit").is_file()
    assert not (tmp_path / "m.png").exists()


def test_fit_passes_training_options_through(tmp_path: Path, monkeypatch) -> None:
    import flowkit.train.tabular

    seen = {}
    real = flowkit.train.tabular.fit_density

    def spy(flow, data, **kwargs):
        seen.update(kwargs)
        return real(flow, data, **{**kwargs, "compile": False})

    monkeypatch.setattr(flowkit.train.tabular, "fit_density", spy)
    result = run("fit", "toy:rings", "--toy-samples", "300", "-o", str(tmp_path / "m.flowkit"), "--no-plot",
                 "--compile", "--lr", "0.002", "--patience", "7", "--seed", "5", *FAST)
    assert result.exit_code == 0, result.output
    assert seen["compile"] is True and seen["learning_rate"] == 0.002 and seen["patience"] == 7
    assert seen["seed"] == 5 and seen["epochs"] == 3 and seen["progress"] is False


BAD_TABLES = {
    "text": "a,b\n1,2\n3,four\n",
    "nan": "a,b\n1,2\n3,NaN\n",
    "inf": "a,b\n1,2\n-inf,3\n",
    "ragged": "a,b\n1,2\n3,4,5\n",
    "empty": "",
    "header-only": "a,b\n",
    "constant-column": "a,b\n1,7\n2,7\n3,7\n",
}


@pytest.mark.parametrize("kind", list(BAD_TABLES))
def test_fit_refuses_bad_tables_and_keeps_existing_output(kind: str, tmp_path: Path) -> None:
    data, model = tmp_path / "bad.csv", tmp_path / "model.flowkit"
    data.write_text(BAD_TABLES[kind])
    model.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(model), *FAST])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert model.read_bytes() == b"precious"


def test_score_refuses_wrong_columns_and_corrupt_models(fitted, tmp_path: Path) -> None:
    model, _ = fitted
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b,c\n1,2,3\n")
    out = tmp_path / "scores.csv"
    out.write_text("keep me")
    result = CliRunner().invoke(main, ["score", str(model), str(wrong), "-o", str(out)])
    assert result.exit_code == 1 and "expects 2 columns, the data has 3" in result.stderr
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("w,h\n1,2\n")
    result = CliRunner().invoke(main, ["score", str(model), str(renamed)])
    assert result.exit_code == 1 and "column names differ" in result.stderr
    corrupt = tmp_path / "corrupt.flowkit"
    corrupt.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    for command in (["score", str(corrupt), str(wrong)], ["sample", str(corrupt)], ["info", str(corrupt)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert out.read_text() == "keep me"


def test_interrupted_fit_keeps_checkpoint_and_resumes(tmp_path: Path) -> None:
    model = tmp_path / "m.flowkit"
    arguments = ["fit", "toy:two_moons", "--toy-samples", "2000", "-o", str(model), "--epochs", "100",
                 "--patience", "1000", "--transforms", "2", "--hidden", "16", "--no-plot", "--batch-size", "256",
                 "--validation-fraction", "0.1"]
    # -q and no stdout pipe: nothing the test does not read can fill a pipe and stall the run.
    process = subprocess.Popen([str(Path(sys.executable).with_name("flowkit")), "--threads", "1", *arguments, "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = Path(f"{model}.ckpt")
    # Signal only once training runs (its first checkpoint is written): earlier, SIGINT would
    # land in Python's start-up or torch's import, which is not what this test is about. The
    # deadline is generous because a loaded machine can take tens of seconds to get there.
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not checkpoint.exists():
        process.kill()
        pytest.fail(f"the fit wrote no checkpoint to interrupt (exit status {process.wait()})")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "resume with the same `flowkit fit` command with --resume" in stderr and "Traceback" not in stderr
    assert checkpoint.is_file() and not model.exists()
    interrupted_at = torch.load(checkpoint, weights_only=True)["run"]["step"]
    total = 100 * 8  # 1800 training rows of the 2000 drawn, in batches of 256
    assert 0 < interrupted_at < total
    result = run(*arguments, "-q", "--resume")
    assert result.exit_code == 0, result.output
    assert load_model(model)[2]["steps"] == total and not checkpoint.exists()


def test_installed_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,x\n")
    script = Path(sys.executable).with_name("flowkit")
    process = subprocess.run([str(script), "fit", str(bad)], capture_output=True, text=True)
    assert process.returncode == 1
    assert process.stderr.strip() == f"error: {bad}: line 2, column 'b': non-numeric value 'x'"


@pytest.mark.skipif(not (MINIBOONE / "val.npy").is_file(), reason="shared MINIBOONE splits not present")
def test_fit_and_score_real_miniboone(tmp_path: Path) -> None:
    model = tmp_path / "miniboone.flowkit"
    result = run("fit", str(MINIBOONE / "val.npy"), "-o", str(model), "--max-steps", "200", "--epochs", "100",
                 "--transforms", "2", "--hidden", "16", "--batch-size", "128", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    result = run("score", str(model), str(MINIBOONE / "test.npy"), "-o", str(tmp_path / "scores.csv"))
    assert result.exit_code == 0
    scores = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    assert scores.shape == (3648,) and np.isfinite(scores).all()
    # Baseline: the diagonal Gaussian fitted to the same rows (what the flow is at initialisation),
    # scored on the held-out test split. 200 steps measured about 9 nats/row better.
    val, test = np.load(MINIBOONE / "val.npy"), np.load(MINIBOONE / "test.npy")
    mean, std = val.mean(0), val.std(0)
    baseline = (-0.5 * ((test - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(1)
    assert scores.mean() > baseline.mean() + 4.0


@pytest.mark.skipif(not (MINIBOONE / "val.npy").is_file(), reason="shared MINIBOONE splits not present")
def test_real_miniboone_as_text_tables(tmp_path: Path) -> None:
    """The same real table as a CSV with a header and as headerless TSV: fit, score, sample, plot."""
    val, test = np.load(MINIBOONE / "val.npy"), np.load(MINIBOONE / "test.npy")
    names = [f"f{i}" for i in range(val.shape[1])]
    np.savetxt(tmp_path / "val.csv", val, delimiter=",", header=",".join(names), comments="", fmt="%.10g")
    np.savetxt(tmp_path / "test.tsv", test[:500], delimiter="\t", fmt="%.10g")
    model = tmp_path / "m.flowkit"
    result = run("fit", str(tmp_path / "val.csv"), "-o", str(model), "--flow", "maf", "--max-steps", "20",
                 "--transforms", "1", "--hidden", "16", "--no-plot", "-q")
    assert result.exit_code == 0, result.output
    assert load_model(model)[1].columns == names
    # Headerless rows are matched by position against the named model.
    assert run("score", str(model), str(tmp_path / "test.tsv"), "-o", str(tmp_path / "s.csv")).exit_code == 0
    scores = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert scores.shape == (500,) and np.isfinite(scores).all()
    assert run("sample", str(model), "-n", "300", "-o", str(tmp_path / "x.csv")).exit_code == 0
    samples = np.loadtxt(tmp_path / "x.csv", delimiter=",", skiprows=1)
    assert samples.shape == (300, 43) and np.isfinite(samples).all()
    assert run("plot", str(model), str(tmp_path / "test.tsv"), "-o", str(tmp_path / "p.png")).exit_code == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"  # marginals of the first 16 features
