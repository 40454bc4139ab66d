"""The model table (`spec.MODELS`): adding a model is one row (and a cell class when no cell
fits); a name that is not in the table is never built; docs/models.md lists every row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from minconv_cli.models import MODELS, ModelRow, ModelSpec, RecurrentForecaster, create_model
from minconv_cli.models.cells import CELLS
from minconv_cli.models.checkpoint import load_checkpoint, save_checkpoint
from minconv_cli.models.gates import UPDATE_GATES, UpdateGate
from minconv_cli.models.padding import GridConv2d
from minconv_cli.training.config import resolve_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


class ToyCell(nn.Module):
    """A gated conv cell: z, c = conv[x, h]; h = lerp(h, tanh(c), sigmoid(z))."""

    def __init__(self, in_channels: int, hidden: int, conv_kwargs: dict):
        super().__init__()
        self.hidden = hidden
        self.conv = GridConv2d(in_channels + hidden, 2 * hidden, **conv_kwargs)

    @classmethod
    def build(cls, row: ModelRow, spec: ModelSpec, in_channels: int, hidden: int) -> ToyCell:
        return cls(in_channels, hidden, spec.conv_options())

    def step(self, x: torch.Tensor, state: torch.Tensor | None):
        h = state if state is not None else x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
        z, c = self.conv(torch.cat([x, h], dim=1)).chunk(2, dim=1)
        h = torch.lerp(h, torch.tanh(c), torch.sigmoid(z))
        return h, h

    def sequence(self, x: torch.Tensor, state: torch.Tensor | None):
        outs = []
        for t in range(x.shape[0]):
            h, state = self.step(x[t], state)
            outs.append(h)
        return torch.stack(outs), state

    def init_state(self, batch: int, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.hidden, *grid)


@pytest.fixture
def toy(monkeypatch):
    """The recipe: a cell class under a name, and one row naming it."""
    monkeypatch.setitem(CELLS, "toy", ToyCell)
    monkeypatch.setitem(MODELS, "toygru", ModelRow("toy", about="a gated conv cell"))
    return "toygru"


def test_a_new_model_is_one_row_and_builds_runs_and_steps(toy):
    torch.manual_seed(0)
    model = create_model(toy, 2, width=4, layers=2, grid=(6, 6))
    assert [type(c) for c in model.cells] == [ToyCell, ToyCell]
    x = torch.randn(2, 5, 2, 6, 6)
    with torch.no_grad():
        y, state = model(x, 3, return_state=True)
        y_t, _ = model.step(x[:, 0], model.init_state(2))
        y_0 = model(x[:, :1], 1)
    assert y.shape == (2, 5, 2, 6, 6) and torch.isfinite(y).all()
    torch.testing.assert_close(y_t, y_0[:, 0])
    assert len(state) == 2 and model.hparams["name"] == toy


def test_a_new_model_round_trips_through_a_checkpoint(toy, tmp_path):
    model = create_model(toy, 2, width=4, layers=1, grid=(6, 6), padding="circular")
    save_checkpoint(tmp_path / "toy.pt", model, {"context": 3})
    loaded = load_checkpoint(tmp_path / "toy.pt")
    assert isinstance(loaded.model.cells[0], ToyCell) and loaded.meta.model == model.spec
    x = torch.randn(1, 4, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, 2), model.eval()(x, 2))


def test_a_new_model_is_a_config_choice_at_once(toy):
    config = resolve_config(overrides=[f"model.name={toy}"], options={"data.paths": ["a.nc"]})
    assert config.model.name == toy
    assert config.model.to_spec(in_channels=1, grid=[4, 4]).name == toy


def test_a_new_min_cell_is_one_row_and_one_update_gate(monkeypatch):
    monkeypatch.setitem(UPDATE_GATES, "neg", UpdateGate(1, lambda gates: -gates[0]))
    monkeypatch.setitem(MODELS, "minconvneg", ModelRow("min", "neg"))
    model = create_model("minconvneg", 1, width=3, layers=1, grid=(4, 4))
    assert model.cells[0].conv.out_channels == 2 * 3  # one gate map and the candidate's
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 1, 4, 4), 2)).all()


def test_a_name_not_in_the_table_is_refused_never_built_as_another_model():
    with pytest.raises(ValueError, match=r"model: expected one of minconvgru, .*got 'convrnn'"):
        create_model("convrnn", 2, grid=(4, 4))
    # also where the spec's checks are skipped: the network builds from the row or not at all
    spec = ModelSpec("convrnn", 2, out_channels=2, widths=[4], grid=[4, 4], norm="none")
    with pytest.raises(ValueError, match=r"model: expected one of .*got 'convrnn'"):
        RecurrentForecaster(spec)


def test_a_row_naming_no_cell_is_refused(monkeypatch):
    monkeypatch.setitem(MODELS, "broken", ModelRow("nocell"))
    with pytest.raises(
        ValueError, match=r"cell: expected one of min, convgru, convlstm, got 'nocell'"
    ):
        create_model("broken", 1, grid=(4, 4))


def documented_rows() -> dict[str, list[str]]:
    """name -> (cell, gate, what) from the table under '## The model table' in docs/models.md."""
    text = DOCS.read_text().split("## The model table", 1)[1].split("\n## ", 1)[0]
    row = r"^\| `(\w+)` \| `(\w+)` \| `?([\w-]+)`? \| (.+?) \|$"
    return {name: rest for name, *rest in (m.groups() for m in re.finditer(row, text, re.M))}


def test_the_docs_list_every_model_of_the_table_with_its_cell_gate_and_line():
    table = {name: [row.cell, row.gate or "-", row.about] for name, row in MODELS.items()}
    assert documented_rows() == table
