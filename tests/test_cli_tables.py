"""The command line on real-looking tables (issue 8): integer, bounded, left-out and context columns;
CSV, TSV, Parquet, .npy and pipes; the fit summary and score's standard error; every bad input
through click's runner and through the installed ``flowkit`` script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from flowkit_cli.main import main
from scipy import stats

from flowkit.data.tabular import read_table
from flowkit.io import load_model

TINY = ["--epochs", "2", "--transforms", "1", "--hidden", "8", "-q", "--no-plot"]
SCRIPT = Path(sys.executable).with_name("flowkit")


def run(*args, input: bytes | str | None = None, ok: bool = True):
    result = CliRunner().invoke(main, [str(arg) for arg in args], input=input)
    if ok:
        assert result.exit_code == 0, result.output + str(result.exception)
    return result


def write_csv(path: Path, columns: list[str], values: np.ndarray) -> Path:
    np.savetxt(path, values, delimiter=",", header=",".join(columns), comments="", fmt="%.10g")
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A mixed table: two real columns, counts, a fraction in (0, 1), a context column, an id."""
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    rows = 600
    level = rng.uniform(-1, 1, rows)
    a = 2 * level + 0.3 * rng.normal(size=rows)
    values = np.column_stack([np.arange(rows), a, rng.normal(size=rows), rng.poisson(3, rows),
                              rng.uniform(size=rows), level])
    return write_csv(folder / "mixed.csv", ["id", "a", "b", "k", "p", "level"], values)


@pytest.fixture(scope="module")
def conditional(table: Path) -> Path:
    model = table.with_name("conditional.flowkit")
    run("fit", table, "-o", model, "--exclude", "id", "--context", "level", "--bounds", "p=0:1",
        "--bounds", "k=0:", "--test", table, *TINY)
    return model


def test_fit_records_roles_preprocessing_and_summary(conditional: Path, table: Path) -> None:
    flow, standardizer, metadata = load_model(conditional)
    assert standardizer.columns == ["a", "b", "k", "p"] and standardizer.context.columns == ["level"]
    assert flow.context_features == 1
    assert [entry["layer"] for entry in flow.config["preprocessing"]] == ["dequantize", "bounds"]
    roles = metadata["columns"]
    assert roles["ignored"] == ["id"] and roles["discrete"] == ["k"] and roles["detected_discrete"] == ["k"]
    assert roles["bounds"] == {"p": [0.0, 1.0], "k": [0.0, None]}
    assert set(metadata["summary"]) == {"train", "validation", "test"}
    entry = metadata["summary"]["validation"]
    assert entry["flow_nll"] <= entry["gaussian_nll"] + 1e-6
    assert entry["flow_bits_per_feature"] == pytest.approx(entry["flow_nll"] / (4 * np.log(2)))
    info = json.loads(run("info", conditional, "--json").output)
    assert info["context_columns"] == ["level"] and info["training"]["summary"] == metadata["summary"]
    assert info["preprocessing"] == flow.config["preprocessing"]
    text = run("info", conditional).output
    assert re.search(r"^context: +level$", text, re.MULTILINE)
    assert re.search(r"^integer columns: +k ", text, re.MULTILINE)
    assert re.search(r"^validation NLL: +[0-9.]+ nats/row", text, re.MULTILINE)


def test_fit_prints_the_summary_and_proposes_bounds(table: Path, tmp_path: Path) -> None:
    result = run("fit", table, "-o", tmp_path / "m.flowkit", "--columns", "a,p,3", "--continuous", "k", *TINY)
    lines = result.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("negative log-likelihood"))
    assert lines[header + 1].split()[:2] == ["train", "480"] and lines[header + 2].split()[0] == "validation"
    assert "column(s) 'p' is in [0, 1]: `--bounds p=0:1` (and so on) would keep density and samples there" \
        in result.stdout
    assert "bounds" not in load_model(tmp_path / "m.flowkit")[2]["columns"]["bounds"], "proposed, never applied"
    assert load_model(tmp_path / "m.flowkit")[0].config.get("preprocessing") is None  # 'k' named continuous


def test_conditional_sampling_at_given_contexts(conditional: Path, tmp_path: Path) -> None:
    result = run("sample", conditional, "-n", "4", "--context", "level=0.5", "--seed", "1")
    lines = result.stdout.splitlines()
    assert lines[0] == "a,b,k,p,level" and len(lines) == 5
    samples = np.loadtxt(lines[1:], delimiter=",")
    assert (samples[:, 4] == 0.5).all() and (samples[:, 2] == np.round(samples[:, 2])).all()
    assert ((samples[:, 3] >= 0) & (samples[:, 3] <= 1)).all() and (samples[:, 2] >= 0).all()
    contexts = write_csv(tmp_path / "contexts.csv", ["level"], np.array([[-0.9], [0.9]]))
    run("sample", conditional, "--context-file", contexts, "-n", "3", "-o", tmp_path / "s.parquet")
    drawn = read_table(tmp_path / "s.parquet")
    assert drawn.columns == ["a", "b", "k", "p", "level"]
    np.testing.assert_array_equal(drawn.values[:, 4], [-0.9] * 3 + [0.9] * 3)
    run("sample", conditional, "--context-file", contexts, "-o", tmp_path / "one.tsv")
    assert len(read_table(tmp_path / "one.tsv").values) == 2, "one sample per context row by default"


def test_score_reads_context_from_the_data_and_reports_the_standard_error(conditional: Path, table: Path,
                                                                          tmp_path: Path) -> None:
    result = run("score", conditional, table, "-o", tmp_path / "s.npy")
    scores = np.load(tmp_path / "s.npy")[:, 0]
    assert scores.shape == (600,) and np.isfinite(scores).all()
    mean, error = scores.mean(), scores.std(ddof=1) / np.sqrt(600)
    assert f"mean log-probability of the cells {mean:.4f} +- {error:.4f} (standard error) over 600 rows" \
        in result.stderr
    density = run("score", conditional, table, "--cells", "density")
    centre = np.loadtxt(density.stdout.splitlines()[1:])
    assert abs(centre.mean() - mean) < 0.3 and "mean log-density" in density.stderr
    # A row outside the model's support scores -inf: beyond a bound, a fraction in an integer column.
    values = np.loadtxt(table, delimiter=",", skiprows=1)[:3]
    values[0, 4], values[1, 3] = 1.5, 2.5
    odd = write_csv(tmp_path / "odd.csv", ["id", "a", "b", "k", "p", "level"], values)
    result = run("score", conditional, odd)
    assert np.isinf(np.loadtxt(result.stdout.splitlines()[1:])[:2]).all() and "2 rows outside" in result.stderr


def test_formats_and_pipes(conditional: Path, table: Path, tmp_path: Path) -> None:
    full = read_table(table)
    pq.write_table(pa.table({name: full.values[:, i] for i, name in enumerate(full.columns)}), tmp_path / "t.parquet")
    from_parquet = run("score", conditional, tmp_path / "t.parquet", "-o", tmp_path / "s.parquet")
    from_csv = run("score", conditional, table, "-o", tmp_path / "s.csv")
    np.testing.assert_allclose(read_table(tmp_path / "s.parquet").values, read_table(tmp_path / "s.csv").values,
                               rtol=1e-6)
    assert from_parquet.stderr.splitlines()[-1] == from_csv.stderr.splitlines()[-1]
    piped = run("score", conditional, "-", input=table.read_bytes())
    assert piped.stdout.splitlines()[0] == "log_density" and len(piped.stdout.splitlines()) == 601
    npy = run("sample", conditional, "-n", "7", "--context", "level=0", "--format", "npy").stdout_bytes
    assert np.load(__import__("io").BytesIO(npy)).shape == (7, 5)
    run("fit", "-", "--format", "tsv", "-o", tmp_path / "piped.flowkit", "--columns", "a,b", *TINY,
        input=table.read_text().replace(",", "\t"))
    assert load_model(tmp_path / "piped.flowkit")[1].columns == ["a", "b"]


def test_plot_draws_a_conditional_2d_model_at_three_contexts(table: Path, tmp_path: Path) -> None:
    model = tmp_path / "c2.flowkit"
    run("fit", table, "-o", model, "--columns", "a,b", "--context", "level", *TINY)
    result = run("plot", model, table, "-o", tmp_path / "p.png")
    for index in (1, 2, 3):
        assert (tmp_path / f"p-context{index}.png").read_bytes()[:4] == b"\x89PNG"
    assert "level=" not in result.stdout and result.stdout.count("wrote") == 3


KNOWN = {
    # name: (draw rows, true log-density of a row, fit options)
    "log-normal under a positive bound": (lambda rng, n: np.exp(rng.normal(size=n)),
                                          lambda x: stats.lognorm(1).logpdf(x), ["--bounds", "v=0:"]),
    "uniform under a two-sided bound": (lambda rng, n: rng.uniform(size=n), lambda x: np.zeros(len(x)),
                                        ["--bounds", "v=0:1"]),
    "Poisson counts as integers": (lambda rng, n: rng.poisson(4, n).astype(float),
                                   lambda x: stats.poisson(4).logpmf(x), ["--bounds", "v=0:"]),
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_scores_equal_known_densities(name: str, tmp_path: Path) -> None:
    """Fit 2000 rows, score 2000 fresh ones: within the central 98% of the distribution (the far
    tails are extrapolation), the mean of score - true log-density is within 0.05 nats. Samples are
    whole numbers for counts and never leave the bounds."""
    draw, truth, options = KNOWN[name]
    rng = np.random.default_rng(0)
    train, test = draw(rng, 2000), draw(rng, 2000)
    write_csv(tmp_path / "train.csv", ["v"], train[:, None])
    write_csv(tmp_path / "test.csv", ["v"], test[:, None])
    model = tmp_path / "m.flowkit"
    run("fit", tmp_path / "train.csv", "-o", model, "--epochs", "10", "--transforms", "1", "--hidden", "16",
        "-q", "--no-plot", *options)
    scores = np.loadtxt(run("score", model, tmp_path / "test.csv").stdout.splitlines()[1:])
    low, high = np.quantile(test, [0.01, 0.99])
    inner = (test >= low) & (test <= high)
    difference = scores[inner] - truth(test[inner])
    assert abs(difference.mean()) < 0.05 + 3 * difference.std() / np.sqrt(inner.sum()), difference.mean()
    samples = np.loadtxt(run("sample", model, "-n", "3000").stdout.splitlines()[1:])
    assert samples.min() >= 0 and (samples.max() <= 1 if "uniform" in name else True)
    if "Poisson" in name:
        assert (samples == np.round(samples)).all()
        assert abs(samples.mean() - 4) < 0.3


@pytest.fixture(scope="module")
def bad_files(table: Path, conditional: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "wrong_context.csv").write_text("height\n1\n")
    (folder / "nan_context.csv").write_text("level\n0.5\nNaN\n")
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "c"]}), folder / "text.parquet")
    (folder / "unconditional.csv").write_text("u,v\n1,2.5\n2,0.1\n3,4.2\n")
    return {"TABLE": table, "MODEL": conditional, "OUT": folder / "out.flowkit", **{
        name.upper().replace(".", "_"): folder / name
        for name in ("wrong_context.csv", "nan_context.csv", "text.parquet", "unconditional.csv")}}


BAD_INPUTS = {  # case: (arguments, one-line message it must contain)
    "unknown column": (["fit", "TABLE", "--columns", "a,nope"], "--columns: unknown column 'nope'"),
    "duplicated column": (["fit", "TABLE", "--exclude", "id,0"], "--exclude: column 'id' is named twice"),
    "context and columns": (["fit", "TABLE", "--columns", "a,b", "--context", "b"],
                            "column 'b' is in both --context and --columns"),
    "bounds violated": (["fit", "TABLE", "--bounds", "a=0:"], "column 'a' has"),
    "lo not below hi": (["fit", "TABLE", "--bounds", "p=1:0"], "--bounds 'p=1:0': LO must be below HI"),
    "bounds syntax": (["fit", "TABLE", "--bounds", "p"], "expected COL=LO:HI"),
    "discrete fractions": (["fit", "TABLE", "--discrete", "a"], "--discrete: column 'a' holds non-integer values"),
    "context file columns": (["sample", "MODEL", "--context-file", "WRONG_CONTEXT_CSV"],
                             "no context column(s) 'level'"),
    "context file NaN": (["sample", "MODEL", "--context-file", "NAN_CONTEXT_CSV"], "non-finite value 'NaN'"),
    "context value": (["sample", "MODEL", "--context", "level=x"], "'x' is not a number"),
    "missing context": (["sample", "MODEL"], "this model is conditional"),
    "parquet text columns": (["fit", "TEXT_PARQUET"], "non-numeric column(s) 'label' (string)"),
    "empty stdin": (["score", "MODEL", "-"], "stdin: no input"),
    "stdin without output": (["fit", "-"], "give -o/--output"),
    "score without context": (["score", "MODEL", "UNCONDITIONAL_CSV"], "column names differ"),
}


def arguments_for(case: str, files: dict[str, Path]) -> list[str]:
    arguments, _ = BAD_INPUTS[case]
    extra = ["-o", str(files["OUT"]), *TINY] if arguments[0] == "fit" and "-" not in arguments else []
    return [str(files.get(argument, argument)) for argument in arguments] + extra


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_and_loses_nothing(case: str, bad_files: dict[str, Path]) -> None:
    bad_files["OUT"].write_bytes(b"precious")
    before = {path: path.read_bytes() for path in bad_files.values()}
    result = run(*arguments_for(case, bad_files), input=b"", ok=False)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert BAD_INPUTS[case][1] in result.stderr
    assert {path: path.read_bytes() for path in bad_files.values()} == before


ISSUE_CASES = ["unknown column", "duplicated column", "context and columns", "bounds violated", "lo not below hi",
               "context file columns", "context file NaN", "parquet text columns", "empty stdin"]


def test_bad_input_through_the_installed_script(bad_files: dict[str, Path]) -> None:
    """The issue's cases through the console script, two processes at a time (each imports torch,
    about 3.5 s of CPU, so the extra cases the runner covers are not repeated here)."""
    cases = ISSUE_CASES
    bad_files["OUT"].write_bytes(b"precious")
    processes = {}
    for start in range(0, len(cases), 2):
        for case in cases[start:start + 2]:
            processes[case] = subprocess.Popen([str(SCRIPT), "--threads", "1", *arguments_for(case, bad_files)],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True)
        for case in cases[start:start + 2]:
            out, err = processes[case].communicate(timeout=120)
            assert processes[case].returncode == 1, (case, err)
            assert err.startswith("error: ") and err.count("\n") == 1 and BAD_INPUTS[case][1] in err, (case, err)
            assert "Traceback" not in err
    assert bad_files["OUT"].read_bytes() == b"precious"


def script(*arguments, input: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(SCRIPT), "--threads", "1", *map(str, arguments)], text=input is not None,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(process: subprocess.Popen, input: str | None = None):
    out, err = process.communicate(input, timeout=300)
    assert process.returncode == 0 and "Traceback" not in (err if isinstance(err, str) else err.decode()), err
    return out, err if isinstance(err, str) else err.decode()


def test_new_options_through_the_installed_script(table: Path, tmp_path: Path) -> None:
    """Every new option once through the console script: a fit from a pipe with column roles,
    bounds and a test file; then sampling at a context file and at given values, scoring from a
    pipe, info --json and a plot, two processes at a time."""
    model = tmp_path / "m.flowkit"
    out, err = finished(script("fit", "-", "--format", "csv", "-o", model, "--exclude", "id", "--context", "level",
                               "--discrete", "k", "--continuous", "b", "--bounds", "p=0:1", "--test", table, *TINY,
                               input=table.read_text()), table.read_text())
    assert "negative log-likelihood" in out and out.count("\ntest ") == 1 and "detected" not in err
    contexts = write_csv(tmp_path / "contexts.csv", ["level"], np.array([[-0.5], [0.5]]))
    text = table.read_text()
    commands = [(["sample", model, "--context-file", contexts, "-n", "2", "-o", tmp_path / "s.parquet"], None),
                (["sample", model, "--context", "level=0.3", "-n", "6", "--format", "npy", "-o", "-"], None),
                (["score", model, "-", "--format", "csv", "--cells", "density", "--draws", "8",
                  "--output-format", "tsv"], text),
                (["info", model, "--json"], None),
                (["plot", model, table, "-o", tmp_path / "p.png"], None)]
    results = []
    for start in range(0, len(commands), 2):  # two at a time: two cores
        batch = [(script(*arguments, input=given), given) for arguments, given in commands[start:start + 2]]
        results += [finished(process, given) for process, given in batch]
    assert read_table(tmp_path / "s.parquet").values.shape == (4, 5)
    assert np.load(__import__("io").BytesIO(results[1][0])).shape == (6, 5)
    assert results[2][0].splitlines()[0] == "log_density" and len(results[2][0].splitlines()) == 601
    assert "mean log-density" in results[2][1]
    assert json.loads(results[3][0])["context_columns"] == ["level"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
