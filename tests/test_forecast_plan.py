"""Forecast plans: a rollout asks one object for its rows, their initial frames and the rule applied
to every lead; the deterministic forecast is the plan whose every part is the identity, an
ensemble is another plan, and a new perturbation is one small subclass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from factories import latlon_dataset
from test_rollout import make_checkpoint

from minconv_cli.rollout import DeterministicPlan, EnsemblePlan, forecast, make_plan, rollout
from minconv_cli.rollout.forecast_loop import residual_count
from minconv_cli.rollout.plan import EnsembleSpec

STEPS, CONTEXT = 4, 5
INITS = "2000-01-06,2000-01-08"


class ShiftedLeads(DeterministicPlan):
    """The recipe's toy perturbation, all in one place: every lead is shifted by `SHIFT`
    (normalised units, so SHIFT x the training std in physical units) before it is fed back."""

    SHIFT = 0.25

    def leads(self, keys, steps, context):
        return lambda x, y, valid: lambda lead, pred: pred + self.SHIFT


@pytest.fixture
def setup(tmp_path):
    """Lat/lon data, an (untrained) checkpoint of it, the model, its normaliser and some frames."""
    data = tmp_path / "data.nc"
    latlon_dataset(n_time=12, n_lat=6, n_lon=8).to_netcdf(data)
    model, fields, normalizer = make_checkpoint(data, tmp_path / "a.pt", context=CONTEXT)
    rng = np.random.default_rng(3)
    shape = (4, CONTEXT, len(fields.channels), *fields.grid_shape)
    frames = (
        rng.standard_normal(shape) * normalizer.std[:, None, None] + normalizer.mean[:, None, None]
    )
    return tmp_path, data, model, normalizer, frames.astype(np.float32)


def store(tmp, data, name, **options):
    out = tmp / name
    options = {"init_times": INITS, "device": "cpu", "precision": "fp32", **options}
    rollout(tmp / "a.pt", [data], STEPS, out, **options)
    return xr.open_zarr(out).load()


def plain_forecast(model, normalizer, frames, steps):
    """The forecast as the model makes it: context in parallel, then its own leads fed back."""
    x, _ = normalizer.normalize(frames)
    with torch.inference_mode():
        y, state = model(torch.from_numpy(x), context=x.shape[1], return_state=True)
        leads = [y[:, -1]]
        for _ in range(1, steps):
            pred, state = model.step(leads[-1], state, static=None)
            leads.append(pred)
        return normalizer.denormalize(torch.stack(leads, 1)).float().numpy()


def ensemble_forecast_by_hand(model, normalizer, frames, steps, noise, mix):
    """The ensemble forecast spelt out: at every lead add the drawn one-step residuals of the
    context x their factor, then recentre the rows with `mix` (as before plans existed)."""
    x, valid = normalizer.normalize(frames)
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        y, state = model(xt, context=xt.shape[1], return_state=True)
        n = residual_count(xt.shape[1])
        pool = torch.where(torch.from_numpy(valid[:, -n:]), xt[:, -n:] - y[:, -n - 1 : -1], 0.0)
        rows = torch.arange(pool.shape[0])[:, None]
        factor = torch.from_numpy(noise[1])[:, None, None, None, None]
        error = pool[rows, torch.from_numpy(noise[0])] * factor
        m = torch.from_numpy(mix)
        pred = torch.einsum("rb,b...->r...", m, (y[:, -1] + error[:, 0]).float())
        leads = [pred]
        for i in range(1, steps):
            pred, state = model.step(pred, state, static=None)
            pred = torch.einsum("rb,b...->r...", m, (pred + error[:, i]).float())
            leads.append(pred)
        return normalizer.denormalize(torch.stack(leads, 1)).float().numpy()


def test_a_new_perturbation_is_one_subclass_that_the_rollout_applies_at_every_lead(setup):
    tmp, data, _, normalizer, _ = setup
    plain = store(tmp, data, "plain.zarr")
    shifted = store(tmp, data, "shifted.zarr", plan=ShiftedLeads())
    assert "number" not in shifted.dims  # a deterministic-shaped plan writes a deterministic store
    for c, name in enumerate(normalizer.channels):
        lead1 = (shifted[name] - plain[name]).isel(prediction_timedelta=0).values
        expected = ShiftedLeads.SHIFT * normalizer.std[c]
        np.testing.assert_allclose(lead1, expected, rtol=1e-4)
        later = (shifted[name] - plain[name]).isel(prediction_timedelta=STEPS - 1).values
        assert np.abs(later).max() > 0  # fed back: the shifted leads drive the later ones


def test_the_deterministic_plan_is_the_plain_forecast_bit_for_bit(setup):
    tmp, data, model, normalizer, frames = setup
    reference = plain_forecast(model, normalizer, frames, STEPS)
    plan = DeterministicPlan()
    keys = [(CONTEXT - 1, 0, (b,)) for b in range(len(frames))]
    ingested = plan.initial(frames, keys, normalizer.std)
    assert ingested is frames  # the identity is no operation at all, not + 0 or x 1
    rule = plan.leads(keys, STEPS, CONTEXT)
    out = forecast(model, normalizer, ingested, None, STEPS, "cpu", rule)
    np.testing.assert_array_equal(out, reference)
    # and through the whole rollout: the default is exactly the deterministic plan
    default = store(tmp, data, "default.zarr")
    planned = store(tmp, data, "planned.zarr", plan=make_plan(1, None, 0.1, 0.0, 0, 0.0))
    assert isinstance(make_plan(1, None, 0.1, 0.0, 0, 0.0), DeterministicPlan)
    for name in normalizer.channels:
        np.testing.assert_array_equal(planned[name].values, default[name].values)


def test_the_ensemble_plan_reproduces_the_ensemble_forecast(setup):
    tmp, data, model, normalizer, frames = setup
    spec = EnsembleSpec(members=4, perturbation=0.01, seed=7, step_noise=0.5, recentre=True)
    plan = EnsemblePlan(spec)
    keys = [(CONTEXT - 1, 0, (0, m)) for m in range(4)]  # one (init, sample): a whole block
    ingested = plan.initial(frames[[0, 0, 0, 0]], keys, normalizer.std)
    assert np.array_equal(ingested[0], frames[0])  # member 0 is the control
    assert not np.array_equal(ingested[1], frames[0])
    noise, mix = plan.step_perturbation(keys, STEPS, CONTEXT), plan.mixing(keys)
    reference = ensemble_forecast_by_hand(model, normalizer, ingested, STEPS, noise, mix)
    rule = plan.leads(keys, STEPS, CONTEXT)
    out = forecast(model, normalizer, ingested, None, STEPS, "cpu", rule)
    np.testing.assert_array_equal(out, reference)
    # the rollout options make this very plan
    options = {"members": 4, "perturbation": 0.01, "seed": 7, "step_noise": 0.5, "recentre": True}
    by_options = store(tmp, data, "options.zarr", **options)
    by_plan = store(tmp, data, "plan.zarr", plan=plan)
    assert by_plan.sizes["number"] == 4
    for name in normalizer.channels:
        np.testing.assert_array_equal(by_plan[name].values, by_options[name].values)
    assert by_plan.attrs["ensemble"] == by_options.attrs["ensemble"]
