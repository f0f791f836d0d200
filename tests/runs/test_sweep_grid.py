"""A sweep's parameter sets, as tables: ``--map`` values and ranges, the cartesian grid,
``--zip``, rows from a DataFrame or a list of dicts, and every refusal as one sentence."""

from __future__ import annotations

import pandas as pd
import pytest

from sandbox_magics.exceptions import SandboxError, SweepError
from sandbox_magics.sweeps import MAX_ITEMS, from_rows, grid, parse_map
from sandbox_magics.sweeps.grid import item_name


@pytest.mark.parametrize(("spec", "parsed"), [
    ("lr=1e-4,3e-4,1e-3", ("lr", ["1e-4", "3e-4", "1e-3"])),
    ("seed=0..4", ("seed", ["0", "1", "2", "3", "4"])),
    ("seed=-2..0", ("seed", ["-2", "-1", "0"])),
    ("opt= adam , sgd", ("opt", ["adam", "sgd"])),
    ("one=x", ("one", ["x"])),
])
def test_a_map_flag_gives_its_name_and_values(spec: str, parsed: tuple[str, list[str]]) -> None:
    assert parse_map(spec) == parsed


@pytest.mark.parametrize(("spec", "says"), [
    ("lr", "NAME=VALUES"), ("1lr=1", "NAME=VALUES"), ("lr=", "needs values"),
    ("lr=1,,2", "needs values"), ("seed=5..1", "ends before it starts"),
    ("seed=0..99999", "more than 10,000 values"),
])
def test_a_malformed_map_flag_is_one_sentence(spec: str, says: str) -> None:
    with pytest.raises(SweepError, match=says) as caught:
        parse_map(spec)
    assert isinstance(caught.value, SandboxError) and "\n" not in str(caught.value)


def test_the_grid_is_every_combination_in_order_and_zip_pairs_the_lists() -> None:
    maps = [("lr", ["1e-4", "3e-4"]), ("seed", ["0", "1", "2"])]
    assert grid(maps) == [{"lr": lr, "seed": s} for lr in ("1e-4", "3e-4") for s in "012"]
    assert grid([("a", ["1", "2"]), ("b", ["x", "y"])], zipped=True) == [
        {"a": "1", "b": "x"}, {"a": "2", "b": "y"}]


@pytest.mark.parametrize(("maps", "zipped", "says"), [
    ([], False, "at least one --map"),
    ([("a", ["1"]), ("a", ["2"])], False, "a came twice"),
    ([("a", ["1", "2"]), ("b", ["x"])], True, "same length; got a: 2, b: 1"),
    ([("a", [str(i) for i in range(200)]), ("b", [str(i) for i in range(51)])], False,
     "10,200 items, more than the 10,000"),
])
def test_a_grid_that_cannot_be_made_is_one_sentence(
        maps: list[tuple[str, list[str]]], zipped: bool, says: str) -> None:
    with pytest.raises(SweepError, match=says):
        grid(maps, zipped)


def test_rows_of_a_dataframe_or_of_dicts_are_items_with_their_values_as_text() -> None:
    frame = pd.DataFrame({"lr": [1e-4, 3e-4], "layers": [2, 4], "opt": ["adam", "sgd"]})
    assert from_rows(frame) == [{"lr": "0.0001", "layers": "2", "opt": "adam"},
                                {"lr": "0.0003", "layers": "4", "opt": "sgd"}]
    assert from_rows([{"x": "a"}, {"x": 1}]) == [{"x": "a"}, {"x": "1"}]


@pytest.mark.parametrize(("data", "says"), [
    (pd.DataFrame({"lr": []}), "grid is empty"),
    ("lr=1", "list of dicts or a DataFrame, got str"),
    ([{"bad name": 1}], "variable names, got 'bad name'"),
    ([{"x": i} for i in range(MAX_ITEMS + 1)], "more than the 10,000"),
])
def test_rows_that_make_no_sweep_are_one_sentence(data: object, says: str) -> None:
    with pytest.raises(SweepError, match=says):
        from_rows(data)


def test_an_item_is_named_after_its_sweep_and_parameters() -> None:
    assert item_name("lr-sweep", {"lr": "0.0003", "seed": "2"}) == "lr-sweep[lr=0.0003,seed=2]"
