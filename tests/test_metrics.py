"""Score functions: each equals a hand computation on small arrays, weighted and not, with NaNs."""

import numpy as np
import pytest
import xarray as xr

from minconv_cli.evaluate import metrics

SPACE = ("y", "x")
CASES = ("time",)
NAN = np.nan


def grid(values, dims=("time", "y", "x")) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims=dims)


# two init times on a 2 x 2 grid; one truth cell is NaN at the second time
TRUTH = grid([[[1.0, 2.0], [3.0, 4.0]], [[2.0, NAN], [0.0, 1.0]]])
FC = grid([[[2.0, 2.0], [1.0, 4.0]], [[1.0, 5.0], [0.0, 4.0]]])
# errors over the 7 valid cells: +1, 0, -2, 0 | -1, 0, +3
ERRORS = np.array([1.0, 0.0, -2.0, 0.0, -1.0, 0.0, 3.0])
W_ROW = np.array([0.5, 1.5])  # weights along y (latitude rows)
ERROR_WEIGHTS = np.array([0.5, 0.5, 1.5, 1.5, 0.5, 1.5, 1.5])  # the row weight of each valid cell


def test_area_weights_are_cos_latitude_with_mean_one():
    lat = xr.DataArray([60.0, 0.0, -60.0, 90.0], dims="latitude")
    w = metrics.area_weights(lat)
    assert float(w.mean()) == pytest.approx(1.0)
    cos = np.cos(np.deg2rad([60.0, 0.0, -60.0, 90.0]))
    np.testing.assert_allclose(w.values, cos / cos.mean(), atol=1e-12)


def test_mse_rmse_mae_bias_unweighted_skip_nan_cells():
    assert float(metrics.mse(FC, TRUTH, SPACE, CASES)) == pytest.approx(np.mean(ERRORS**2))
    assert float(metrics.rmse(FC, TRUTH, SPACE, CASES)) == pytest.approx(
        np.sqrt(np.mean(ERRORS**2))
    )
    assert float(metrics.mae(FC, TRUTH, SPACE, CASES)) == pytest.approx(np.mean(abs(ERRORS)))
    assert float(metrics.bias(FC, TRUTH, SPACE, CASES)) == pytest.approx(np.mean(ERRORS))


def test_weighted_metrics_renormalise_the_weights_over_valid_cells():
    w = xr.DataArray(W_ROW, dims="y")
    wsum = ERROR_WEIGHTS.sum()
    expect_mse = (ERROR_WEIGHTS * ERRORS**2).sum() / wsum
    assert float(metrics.mse(FC, TRUTH, SPACE, CASES, w)) == pytest.approx(expect_mse)
    assert float(metrics.rmse(FC, TRUTH, SPACE, CASES, w)) == pytest.approx(np.sqrt(expect_mse))
    assert float(metrics.mae(FC, TRUTH, SPACE, CASES, w)) == pytest.approx(
        (ERROR_WEIGHTS * abs(ERRORS)).sum() / wsum
    )
    assert float(metrics.bias(FC, TRUTH, SPACE, CASES, w)) == pytest.approx(
        (ERROR_WEIGHTS * ERRORS).sum() / wsum
    )


def test_rmse_is_the_root_of_the_mean_over_cases_not_the_mean_of_roots():
    truth = grid(np.zeros((2, 1, 2)))
    fc = grid([[[1.0, 1.0]], [[3.0, 3.0]]])
    assert float(metrics.rmse(fc, truth, SPACE, CASES)) == pytest.approx(np.sqrt(5.0))


def test_other_dims_are_kept():
    truth = grid(np.zeros((2, 3, 1, 2)), dims=("time", "lead", "y", "x"))
    fc = truth + xr.DataArray([0.0, 1.0, 2.0], dims="lead")
    np.testing.assert_allclose(metrics.rmse(fc, truth, SPACE, CASES).values, [0.0, 1.0, 2.0])


def test_acc_is_the_weighted_anomaly_correlation_per_case_then_averaged():
    clim = grid([[1.0, 1.0], [1.0, 1.0]], dims=SPACE)
    w = xr.DataArray(W_ROW, dims="y")
    per_case = []
    for t in range(2):
        f, o = FC.values[t].ravel() - 1.0, TRUTH.values[t].ravel() - 1.0
        cw = np.repeat(W_ROW, 2)
        ok = ~np.isnan(o)
        f, o, cw = f[ok], o[ok], cw[ok]
        per_case.append((cw * f * o).sum() / np.sqrt((cw * f * f).sum() * (cw * o * o).sum()))
    got = metrics.acc_per_case(FC, TRUTH, clim, SPACE, w)
    np.testing.assert_allclose(got.values, per_case)
    assert float(metrics.acc(FC, TRUTH, clim, SPACE, CASES, w)) == pytest.approx(np.mean(per_case))


def test_acc_of_a_perfect_forecast_is_one_and_of_opposite_anomalies_minus_one():
    clim = TRUTH.mean("time")
    opposite = 2 * clim - TRUTH
    assert float(metrics.acc(TRUTH, TRUTH, clim, SPACE, CASES)) == pytest.approx(1.0)
    assert float(metrics.acc(opposite, TRUTH, clim, SPACE, CASES)) == pytest.approx(-1.0)


def test_acc_of_the_climatology_itself_is_undefined():
    clim = grid([[54000.0, 54100.0], [53900.0, 54050.0]], dims=SPACE).astype(np.float32)
    fc = clim.expand_dims(time=2).astype(np.float64)  # float32 values seen as float64
    truth = fc + grid([[[1.0, -1.0], [2.0, 0.0]], [[0.5, 0.5], [-1.0, 3.0]]])
    assert np.isnan(metrics.acc_per_case(fc, truth, clim, SPACE).values).all()
    assert np.isnan(float(metrics.acc(fc, truth, clim, SPACE, CASES)))


def test_acc_averages_over_the_cases_where_it_is_defined():
    clim = grid(np.zeros((2, 2)), dims=SPACE)
    fc = TRUTH.fillna(0.0).copy()
    fc[1] = 0.0  # the second case has no forecast anomaly
    assert float(metrics.acc(fc, TRUTH, clim, SPACE, CASES)) == pytest.approx(1.0)


def test_relative_l2_per_case_then_averaged():
    w = xr.DataArray(W_ROW, dims="y")
    expect = []
    for t in range(2):
        e = (FC.values[t] - TRUTH.values[t]).ravel()
        o = TRUTH.values[t].ravel()
        cw = np.repeat(W_ROW, 2)
        ok = ~np.isnan(o)
        expect.append(np.sqrt((cw[ok] * e[ok] ** 2).sum() / (cw[ok] * o[ok] ** 2).sum()))
    np.testing.assert_allclose(metrics.rel_l2_per_case(FC, TRUTH, SPACE, w).values, expect)
    assert float(metrics.rel_l2(FC, TRUTH, SPACE, CASES, w)) == pytest.approx(np.mean(expect))
    # unweighted: errors (1, 0, -2, 0) over truth (1, 2, 3, 4); the NaN cell drops out of both norms
    plain = [np.sqrt(5.0 / 30.0), np.sqrt((1.0 + 0.0 + 9.0) / (4.0 + 0.0 + 1.0))]
    assert float(metrics.rel_l2(FC, TRUTH, SPACE, CASES)) == pytest.approx(np.mean(plain))


def test_relative_l2_of_a_zero_truth_is_undefined():
    zero = grid(np.zeros((1, 2, 2)))
    assert np.isnan(float(metrics.rel_l2(zero + 1.0, zero, SPACE, CASES)))


def test_skill_score_is_one_minus_the_mse_ratio_and_undefined_against_an_exact_reference():
    mse = xr.DataArray([1.0, 2.0, 3.0], dims="lead")
    ref = xr.DataArray([4.0, 2.0, 0.0], dims="lead")
    got = metrics.skill_score(mse, ref).values
    np.testing.assert_allclose(got[:2], [0.75, 0.0])
    assert np.isnan(got[2])


def test_all_nan_cells_give_undefined_not_an_error():
    empty = grid(np.full((1, 2, 2), np.nan))
    assert np.isnan(float(metrics.rmse(empty, TRUTH[:1], SPACE, CASES)))
