"""benchmarks/ensemble_drift.py: the drift of the +- pairs' mean from its control, and its
correlation with the control's error, on a hand-made store whose answers are known."""

import importlib.util
from pathlib import Path

import numpy as np
import xarray as xr

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ensemble_drift.py"


def drift_module():
    spec = importlib.util.spec_from_file_location("ensemble_drift", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def store_and_truth(sign: float):
    """Two blocks of (control, 2 pairs); every pair's mean is its control + D, the truth is the
    control + sign * D, so the drift is D, all of it systematic, correlated `sign` with the error."""
    rng = np.random.default_rng(0)
    times = np.array(["2000-01-02", "2000-01-03"], dtype="datetime64[ns]")
    lead = np.array([1], dtype="timedelta64[D]").astype("timedelta64[ns]")
    shape = (2, 1, 3, 4)  # time, lead, lat, lon
    control = rng.normal(size=shape)
    drift = rng.normal(size=shape)
    members = []
    for _ in range(2):  # blocks: control, +e1, -e1, +e2, -e2
        members.append(control)
        for _ in range(2):
            e = rng.normal(size=shape)
            members += [control + drift + e, control + drift - e]
    field = np.stack(members, axis=1)  # time, number, lead, lat, lon
    lat, lon = np.array([0.0, 30.0, 60.0]), np.arange(4.0)
    store = xr.Dataset(
        {"z": (("time", "number", "prediction_timedelta", "latitude", "longitude"), field)},
        coords={
            "time": times,
            "number": np.arange(10),
            "prediction_timedelta": lead,
            "latitude": lat,
            "longitude": lon,
            "member_perturbed": ("number", [m % 5 != 0 for m in range(10)]),
        },
    )
    truth = xr.Dataset(
        {"z": (("time", "latitude", "longitude"), (control + sign * drift)[:, 0])},
        coords={"time": times + lead[0], "latitude": lat, "longitude": lon},
    )
    return store, truth, drift, sign * drift


def test_a_drift_shared_by_every_pair_is_all_systematic_and_its_correlation_has_the_right_sign():
    module = drift_module()
    w = np.cos(np.deg2rad([0.0, 30.0, 60.0]))[:, None]
    w = w / w.mean()
    for sign in (1.0, -1.0):
        store, truth, drift, error = store_and_truth(sign)
        (row,) = module.drift_table(store, truth)
        assert row["variable"] == "z" and row["lead_hours"] == 24.0
        expected = np.sqrt((drift[:, 0] ** 2 * w).mean())
        np.testing.assert_allclose(row["drift_rms"], expected, rtol=1e-9)
        np.testing.assert_allclose(row["drift_systematic_rms"], expected, rtol=1e-9)
        np.testing.assert_allclose(row["corr_drift_error"], sign, rtol=1e-9)
        np.testing.assert_allclose(row["control_rmse"], np.sqrt((error[:, 0] ** 2 * w).mean()))
