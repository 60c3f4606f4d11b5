"""Model files and atomic writes: round trips, and refusal of anything that is not a flowkit model."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import flowkit
from flowkit.data.tabular import Standardizer
from flowkit.io import ModelFileError, atomic_write, load_model, save_model


def test_round_trip_keeps_architecture_weights_preprocessing_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    flow = flowkit.nsf(3, context_features=0, transforms=2, hidden_features=8, num_bins=4, permutation="lu")
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    standardizer = Standardizer(np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0]), ["a", "b", "c"])
    save_model(tmp_path / "m.flowkit", flow, standardizer, {"rows": 10})
    loaded, loaded_standardizer, metadata = load_model(tmp_path / "m.flowkit")
    x = torch.randn(20, 3)
    torch.testing.assert_close(loaded.log_prob(x), flow.eval().log_prob(x), rtol=0, atol=0)
    assert loaded.config == flow.config and metadata == {"rows": 10}
    assert loaded_standardizer.columns == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded_standardizer.std, standardizer.std)


def test_float64_models_come_back_in_float64(tmp_path: Path) -> None:
    save_model(tmp_path / "m.flowkit", flowkit.realnvp(2, transforms=1).double())
    assert next(load_model(tmp_path / "m.flowkit")[0].parameters()).dtype == torch.float64


def test_refuses_truncated_foreign_and_malicious_files(tmp_path: Path) -> None:
    good = tmp_path / "good.flowkit"
    save_model(good, flowkit.realnvp(2, transforms=1))
    (tmp_path / "truncated").write_bytes(good.read_bytes()[:200])
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign")
    torch.save({"format": "flowkit-model", "version": 99}, tmp_path / "future")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    (tmp_path / "malicious").write_bytes(pickle.dumps({"format": "flowkit-model", "x": Payload()}))
    expected = {"truncated": "not a readable flowkit model file", "foreign": "not a flowkit model file",
                "future": "version 99 is not supported", "malicious": "not a readable flowkit model file",
                "missing": "no such model file"}
    for name, message in expected.items():
        with pytest.raises(ModelFileError, match=message):
            load_model(tmp_path / name)
    assert not (tmp_path / "owned").exists(), "loading must never run code from the file"


def test_atomic_write_gives_normal_permissions_and_keeps_existing_ones(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.csv"
    atomic_write(fresh, lambda handle: handle.write("a\n"), mode="w")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~mask
    kept = tmp_path / "kept.csv"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write(kept, lambda handle: handle.write("new"), mode="w")
    assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.flowkit"
    target.write_bytes(b"old")

    def fail(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.flowkit"]



def test_an_interruption_as_the_temporary_file_is_created_leaves_none(tmp_path: Path, monkeypatch) -> None:
    """A signal can land between the file's creation and the code that would delete it (with
    mkstemp, inside mkstemp itself); the temporary file must still be removed."""
    real_open = os.open

    def open_then_interrupt(*args, **kwargs):
        os.close(real_open(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.csv", lambda handle: handle.write("a\n"), mode="w")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []

def test_refuses_damaged_contents_with_a_reason(tmp_path: Path) -> None:
    """Archives that load as plain values but do not make a usable model: each is refused on
    loading with one line, instead of a traceback or NaNs later in sample/score/info."""
    good = tmp_path / "good.flowkit"
    standardizer = Standardizer(np.zeros(2), np.ones(2), ["a", "b"])
    save_model(good, flowkit.realnvp(2, transforms=1), standardizer, {"rows": 3})
    archive = torch.load(good, weights_only=True)
    other = flowkit.maf(2, transforms=1, hidden_features=8)
    nan_weights = {k: v * float("nan") if v.is_floating_point() else v for k, v in archive["state_dict"].items()}
    preprocessing = archive["preprocessing"]
    damaged = {
        "dtype": ({"dtype": "nope"}, "unknown weight type 'nope'"),
        "config": ({"config": "[1, 2]"}, "config is not a JSON object"),
        "other-flow": ({"state_dict": other.state_dict()}, "weights do not fit the realnvp architecture it describes"),
        "nan-weights": ({"state_dict": nan_weights}, "non-finite weights"),
        "metadata": ({"metadata": "[1]"}, "metadata is not a JSON object"),
        "no-mean": ({"preprocessing": {"columns": ["a", "b"]}}, "corrupt flowkit model file"),
        "columns": ({"preprocessing": {**preprocessing, "columns": ["a"]}}, "column names are not 2 distinct names"),
        "mean": ({"preprocessing": {**preprocessing, "mean": torch.zeros(3)}}, "mean is not 2 finite numbers"),
        "std": ({"preprocessing": {**preprocessing, "std": torch.zeros(2)}}, "std is not positive"),
    }
    for name, (change, message) in damaged.items():
        torch.save({**archive, **change}, tmp_path / name)
        with pytest.raises(ModelFileError, match=message) as error:
            load_model(tmp_path / name)
        assert "\n" not in str(error.value) and str(error.value).startswith(str(tmp_path / name))


def test_masks_are_derived_not_saved_and_older_files_with_masks_still_load(tmp_path: Path) -> None:
    """MADE masks follow from the degrees: model files, checkpoints and in-memory copies of the
    state leave them out (each would be a second matrix of the weights' size). Files written
    when masks were saved load, and give the same densities."""
    torch.manual_seed(0)
    flow = flowkit.build("maf", features=4, transforms=2, hidden_features=[16, 16])
    masks = {name: buffer for name, buffer in flow.named_buffers() if name.endswith(".mask")}
    assert masks and not set(masks) & set(flow.state_dict())
    save_model(tmp_path / "new.flowkit", flow)
    archive = torch.load(tmp_path / "new.flowkit", weights_only=True)
    archive["state_dict"].update({name: mask.clone() for name, mask in masks.items()})
    torch.save(archive, tmp_path / "old.flowkit")
    x = torch.randn(16, 4)
    for name in ("new.flowkit", "old.flowkit"):
        loaded, _, _ = load_model(tmp_path / name)
        torch.testing.assert_close(loaded.log_prob(x), flow.eval().log_prob(x), rtol=0, atol=0)
    # the same for a plain load_state_dict (a checkpoint resumed across versions)
    again = flowkit.build("maf", features=4, transforms=2, hidden_features=[16, 16], seed=1)
    again.load_state_dict(archive["state_dict"])
    torch.testing.assert_close(again.eval().log_prob(x), flow.log_prob(x), rtol=0, atol=0)
