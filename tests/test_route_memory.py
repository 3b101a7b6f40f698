"""The batch routes a tune measured are remembered per model, machine and kernel text, and a
later load of the same model recalls them instead of measuring again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker import batched_qmv, route_memory


@pytest.fixture(autouse=True)
def _fresh_routes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("MLXD_HOME", str(tmp_path / "home"))
    batched_qmv._choice.clear()
    yield
    batched_qmv._choice.clear()


def test_routes_come_back_as_they_were_stored(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    route_memory.remember("a", {2: "kernel", 4: "kernel", 8: "mma"}, path)
    route_memory.remember("b", {2: "stock"}, path)
    assert route_memory.recall("a", path) == {2: "kernel", 4: "kernel", 8: "mma"}
    assert route_memory.recall("b", path) == {2: "stock"}
    assert route_memory.recall("c", path) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_default_file_lives_in_mlxd_home(tmp_path: Path) -> None:
    assert route_memory.default_path() == tmp_path / "home" / route_memory.FILE_NAME
    route_memory.remember("a", {2: "flat"})
    assert route_memory.recall("a") == {2: "flat"}


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[1, 2]",
        json.dumps({"a": "kernel"}),
        json.dumps({"a": {"two": "kernel"}}),
        json.dumps({"a": {"2": "warp-speed"}}),  # a route this version does not know
        json.dumps({"a": {}}),
    ],
)
def test_an_unreadable_or_foreign_entry_is_not_recalled(content: str, tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(content)
    assert route_memory.recall("a", path) is None
    route_memory.remember("a", {2: "mma"}, path)  # and it is replaced by a good one
    assert route_memory.recall("a", path) == {2: "mma"}


def test_the_oldest_entries_go_first(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    for i in range(route_memory.MAX_ENTRIES):
        route_memory.remember(f"m{i}", {2: "kernel"}, path)
    route_memory.remember("m0", {2: "stock"}, path)  # stored again: now the newest
    route_memory.remember("new", {2: "mma"}, path)
    assert route_memory.recall("m1", path) is None
    assert route_memory.recall("m0", path) == {2: "stock"}
    assert route_memory.recall("new", path) == {2: "mma"}
    assert len(json.loads(path.read_text())) == route_memory.MAX_ENTRIES


def test_an_unwritable_home_costs_only_the_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    route_memory.remember("a", {2: "kernel"}, blocker / "routes.json")  # its parent is a file
    assert route_memory.recall("a", blocker / "routes.json") is None
    assert "could not remember the batch routes" in caplog.text


def test_the_key_names_model_batch_limit_and_kernels(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    base = route_memory.key(one, 8, "kernel text")
    assert route_memory.key(one, 8, "kernel text") == base
    assert route_memory.key(tmp_path / "x" / ".." / "one", 8, "kernel text") == base  # resolved
    assert len({base, route_memory.key(two, 8, "kernel text"), route_memory.key(one, 4, "kernel text")}) == 3
    assert route_memory.key(one, 8, "kernel text, edited") != base


def test_a_second_load_recalls_what_the_first_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from worker import generation

    tunes: list[int] = []

    def fake_tune(model: Any, max_rows: int, steps: int = 12) -> dict[int, str]:
        tunes.append(max_rows)
        batched_qmv.use({2: "kernel", 4: "mma"})
        return {2: "kernel", 4: "mma"}

    monkeypatch.setattr(batched_qmv, "tune", fake_tune)

    class Loaded:  # what ``_route_batches`` reads of a Generator
        model = None
        model_dir = tmp_path / "model"

    caplog.set_level("INFO", logger="mlxd.worker")
    generation.Generator._route_batches(Loaded(), 4)  # type: ignore[arg-type]
    assert tunes == [4]
    batched_qmv._choice.clear()  # a new worker process
    generation.Generator._route_batches(Loaded(), 4)  # type: ignore[arg-type]
    assert tunes == [4]  # not measured again
    assert batched_qmv.tuned() == {2: "kernel", 4: "mma"}
    assert "as measured at an earlier load" in caplog.text
    generation.Generator._route_batches(Loaded(), 8)  # a larger batch limit: measure
    assert tunes == [4, 8]
