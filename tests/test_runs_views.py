"""Runs as people look at them (issue 21), over HTTP on SQLite and PostgreSQL: the fit's run states
as a filter over the whole study, sorting by any column, the CSV of a filtered view, one run's
page (curves as stored, state and why, submission, audit trail), bounded curves, clear messages,
run counts in the study list, and a recommendation from a loss law alone.

Real data: the Step Law sweep (1,746 runs, whose fit treats ~170 runs as diverged, most of them
beyond the first page) and the Chinchilla loss measurements (one run per (N, D), no LR sweep).
"""

from __future__ import annotations

import csv
import io
import math

import pytest
from fastapi.testclient import TestClient

from hpscale.cli import main
from tests.conftest import SHARED_DATA, assert_error, make_run, steplaw_import_argv

STATES = ("near_optimal", "used", "diverged", "outlier", "failed")
# The smallest Step Law scale (its fit has an optimum there).
SMALLEST = {"n_params": 214663680.0, "tokens": 4e9, "width": 960, "depth": 7}


@pytest.fixture
def steplaw(client: TestClient, database_url: str) -> dict:
    """Step Law imported and fitted; the fit's run states by id."""
    assert main(steplaw_import_argv(database_url)) == 0
    fit = client.post("/v1/studies/steplaw/fits", json={"bootstrap": 20})
    assert fit.status_code == 201, fit.text[:500]
    return client.get("/v1/studies/steplaw/fits/latest/run-states").json()


def every_page(client: TestClient, path: str, **params: object) -> list[dict]:
    items, cursor = [], None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text[:500]
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items
    raise AssertionError("no end of pages")


@pytest.mark.slow  # imports and fits the Step Law sweep
def test_the_state_filter_covers_the_whole_study(client: TestClient, steplaw: dict) -> None:
    """Issue item 11: "treated as diverged" found none on page 1 of 1,748 while the fit had 168."""
    states = {int(k): v for k, v in steplaw["states"].items()}
    assert steplaw["counts"]["diverged"] > 100  # more than a page: the old filter could not show them
    first_page = client.get("/v1/studies/steplaw/runs").json()
    assert first_page["fit_id"] == client.get("/v1/studies/steplaw").json()["latest_fit_id"]
    assert all(r["fit_state"] == states[r["id"]] for r in first_page["items"])
    for state in STATES:
        listed = every_page(client, "/v1/studies/steplaw/runs", state=state, limit=37)
        expected = sorted(i for i, s in states.items() if s == state)
        assert [r["id"] for r in listed] == expected, state
        assert all(r["fit_state"] == state for r in listed)
    diverged = every_page(client, "/v1/studies/steplaw/runs", state="diverged", limit=1000)
    assert max(r["id"] for r in diverged) > first_page["items"][-1]["id"]  # beyond the first page
    # the first page says how many runs the view has in all
    page1 = client.get("/v1/studies/steplaw/runs", params={"state": "diverged", "limit": 50}).json()
    assert page1["total"] == len(diverged) == steplaw["counts"]["diverged"] and first_page["total"] == 1746
    page2 = client.get("/v1/studies/steplaw/runs", params={"state": "diverged", "cursor": page1["next_cursor"]})
    assert page2.json()["total"] is None

    # Exclusion is the run's own, at once: the run leaves its state and is listed as excluded.
    victim = diverged[0]["id"]
    assert client.post(f"/v1/studies/steplaw/runs/{victim}/exclude", json={"reason": "bad node"}).status_code == 200
    assert [r["id"] for r in every_page(client, "/v1/studies/steplaw/runs", state="excluded")] == [victim]
    again = every_page(client, "/v1/studies/steplaw/runs", state="diverged", limit=1000)
    assert victim not in {r["id"] for r in again} and len(again) == len(diverged) - 1
    assert client.get("/v1/studies/steplaw/runs", params={"state": "diverged"}).json()["total"] == len(again)
    assert client.get("/v1/studies/steplaw/runs", params={"state": "excluded"}).json()["total"] == 1
    # the dashboard's spelling works too; a state that is not one is a 422 naming it
    near = client.get("/v1/studies/steplaw/runs", params={"state": "near-optimal"}).json()["items"]
    assert near and all(r["fit_state"] == "near_optimal" for r in near)
    error = assert_error(client.get("/v1/studies/steplaw/runs", params={"state": "bogus"}), 422, "validation_error")
    assert error["details"][0]["field"] == "state"


@pytest.mark.slow  # imports and fits the Step Law sweep
def test_states_follow_new_runs_and_new_fits(client: TestClient, steplaw: dict) -> None:
    before = every_page(client, "/v1/studies/steplaw/runs", state="used", limit=1000)
    run = {**make_run(0, run_key="late"), **SMALLEST}
    run.update(learning_rate=1e-3, batch_size=128, final_loss=3.5)  # a scale the fit knows, 3.5 ≫ its best
    [late] = client.post("/v1/studies/steplaw/runs", json=run).json()["ids"]
    # a run stored after the fit gets the state that fit gives it (as the run-states endpoint says)
    state = client.get(f"/v1/studies/steplaw/runs/{late}").json()["fit_state"]
    assert state == client.get("/v1/studies/steplaw/fits/latest/run-states").json()["states"][str(late)] == "diverged"
    assert late in {r["id"] for r in every_page(client, "/v1/studies/steplaw/runs", state="diverged", limit=1000)}
    client.post("/v1/studies/steplaw/fits", json={"bootstrap": 20})  # a new fit: states recomputed
    fresh = client.get("/v1/studies/steplaw/fits/latest/run-states").json()["states"]
    after = every_page(client, "/v1/studies/steplaw/runs", state="used", limit=1000)
    assert [r["id"] for r in after] == sorted(int(k) for k, v in fresh.items() if v == "used")
    assert len(before) > 1000


@pytest.mark.slow  # imports and fits the Step Law sweep
def test_sorting_by_any_column_over_the_whole_study(client: TestClient, steplaw: dict) -> None:
    everything = every_page(client, "/v1/studies/steplaw/runs", limit=1000)
    for column in ("final_loss", "learning_rate", "batch_size", "run_key", "created_at", "weight_decay"):
        for order in ("asc", "desc"):
            listed = every_page(client, "/v1/studies/steplaw/runs", sort=column, order=order, limit=293)
            assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in everything), (column, order)
            values = [r[column] for r in listed]
            present = [v for v in values if v is not None]
            assert values[: len(present)] == present  # NULLs last (Step Law has no weight decay: all NULL)
            assert present == sorted(present, reverse=order == "desc"), (column, order)
    best = client.get("/v1/studies/steplaw/runs", params={"sort": "final_loss", "limit": 1}).json()["items"][0]
    assert best["final_loss"] == min(r["final_loss"] for r in everything if r["final_loss"] is not None)
    # a state filter and a sort together: the worst diverged runs first
    worst = every_page(client, "/v1/studies/steplaw/runs", state="diverged", sort="final_loss", order="desc")
    losses = [r["final_loss"] for r in worst if r["final_loss"] is not None]
    assert losses == sorted(losses, reverse=True) and {r["fit_state"] for r in worst} == {"diverged"}
    # a cursor belongs to its order
    cursor = client.get("/v1/studies/steplaw/runs", params={"sort": "final_loss", "limit": 5}).json()["next_cursor"]
    error = client.get("/v1/studies/steplaw/runs", params={"sort": "tokens", "cursor": cursor})
    assert "sort=final_loss" in assert_error(error, 422, "validation_error")["details"][0]["message"]
    assert_error(client.get("/v1/studies/steplaw/runs", params={"sort": "extra"}), 422, "validation_error")


@pytest.mark.slow  # imports and fits the Step Law sweep
def test_the_csv_of_a_filtered_view(client: TestClient, steplaw: dict) -> None:
    diverged = every_page(client, "/v1/studies/steplaw/runs", state="diverged", sort="final_loss", limit=1000)
    response = client.get("/v1/studies/steplaw/runs.csv", params={"state": "diverged", "sort": "final_loss"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in rows] == [r["id"] for r in diverged]
    assert {"excluded", "excluded_reason", "submission_id"} <= set(rows[0])
    everything = list(csv.DictReader(io.StringIO(client.get("/v1/studies/steplaw/runs.csv").text)))
    assert len(everything) == client.get("/v1/studies/steplaw").json()["run_count"] == 1746


def test_a_study_without_a_fit_has_no_states_to_filter(client: TestClient) -> None:
    client.post("/v1/studies", json={"name": "fresh"})
    client.post("/v1/studies/fresh/runs", json={"runs": [make_run(i) for i in range(3)]})
    page = client.get("/v1/studies/fresh/runs").json()
    assert page["fit_id"] is None and {r["fit_state"] for r in page["items"]} == {None}
    error = assert_error(client.get("/v1/studies/fresh/runs", params={"state": "used"}), 409, "insufficient_data")
    assert "no fit yet" in error["message"]


# --- one run --------------------------------------------------------------------------------


def curve(n: int, x0: float = 1e7) -> list[list[float]]:
    return [[x0 * (k + 1), 3.0 + 2.0 / math.sqrt(k + 1) + (0.01 if k % 7 else 0.0)] for k in range(n)]


@pytest.mark.slow  # imports and fits the Step Law sweep
def test_a_runs_page_has_curves_state_submission_and_history(client: TestClient, steplaw: dict) -> None:
    run = {**make_run(0, run_key="curvy"), **SMALLEST}
    run.update(
        learning_rate=2.7e-2,
        batch_size=128,
        final_loss=3.5,
        loss_curve=curve(3000),
        curves={"eval_loss": curve(40, 1e8), "eval_accuracy": [[1e8 * (k + 1), 0.3 + 0.01 * k] for k in range(40)]},
        extra={"schedule": "wsd", "branch_of": "main-run-7"},
    )
    posted = client.post("/v1/studies/steplaw/runs", json=run).json()
    [run_id] = posted["ids"]
    client.post(f"/v1/studies/steplaw/runs/{run_id}/exclude", json={"reason": "cooldown branch of a broken run"})
    client.post(f"/v1/studies/steplaw/runs/{run_id}/include", json={})
    detail = client.get(f"/v1/studies/steplaw/runs/{run_id}").json()
    assert detail["id"] == run_id and detail["extra"] == {"schedule": "wsd", "branch_of": "main-run-7"}
    assert [c["name"] for c in detail["curves"]] == ["loss", "eval_accuracy", "eval_loss"]
    loss = detail["curves"][0]
    # stored capped: 1,000 of 3,000 points, the first, the last and the lowest among them
    assert loss["n_points"] == 3000 and loss["downsampled"] and len(loss["points"]) == 1000
    submitted = run["loss_curve"]
    assert loss["points"][0] == submitted[0] and loss["points"][-1] == submitted[-1]
    assert min(p[1] for p in loss["points"]) == min(p[1] for p in submitted)
    assert loss["x_unit"] == "tokens" and detail["curves"][2]["points"] == run["curves"]["eval_loss"]
    # the listing's loss_curve is the stored series
    listed = next(r for r in every_page(client, "/v1/studies/steplaw/runs", limit=1000) if r["id"] == run_id)
    assert listed["loss_curve"] == loss["points"]
    # its state in the latest fit, and why, in numbers
    assert detail["fit_state"] == "diverged" and detail["fit_id"] == steplaw["fit_id"]
    assert "% above its scale's best" in detail["state_reason"] and "3.5" in detail["state_reason"]
    assert detail["submission"]["id"] == posted["submission_id"] and detail["submission"]["source"] == "http"
    assert [a["action"] for a in detail["audit"]] == ["submit", "exclude", "include"]
    assert detail["audit"][1]["reason"] == "cooldown branch of a broken run"
    assert_error(client.get("/v1/studies/steplaw/runs/999999"), 404, "not_found")
    assert_error(client.get("/v1/studies/nope/runs/1"), 404, "not_found")


def test_curves_in_steps_and_their_limits(client: TestClient) -> None:
    client.post("/v1/studies", json={"name": "c"})
    run = make_run(1, loss_curve=curve(5), extra={"loss_curve_x": "steps"}, curves={"grad_norm": curve(4)})
    [run_id] = client.post("/v1/studies/c/runs", json=run).json()["ids"]
    assert {c["x_unit"] for c in client.get(f"/v1/studies/c/runs/{run_id}").json()["curves"]} == {"steps"}
    too_many = make_run(2, curves={f"m{i}": curve(2) for i in range(17)})
    error = assert_error(client.post("/v1/studies/c/runs", json=too_many), 422, "validation_error")
    assert error["details"][0]["field"] == "curves"
    reserved = assert_error(
        client.post("/v1/studies/c/runs", json=make_run(3, curves={"loss": curve(2)})), 422, "validation_error"
    )
    assert "loss_curve" in reserved["details"][0]["message"]
    long = make_run(4, curves={"eval": curve(10_001)})
    assert_error(client.post("/v1/studies/c/runs", json=long), 422, "validation_error")
    assert client.get("/v1/studies/c").json()["run_count"] == 1


# --- messages, counts --------------------------------------------------------------------------


def test_a_bare_array_is_told_the_batch_shape(client: TestClient) -> None:
    client.post("/v1/studies", json={"name": "s"})
    error = assert_error(client.post("/v1/studies/s/runs", json=[make_run(0)]), 422, "validation_error")
    assert '{"runs": [...]}' in error["message"] and "JSON array" in error["message"]


def test_limits_read_the_same_for_runs_and_targets(client: TestClient) -> None:
    client.post("/v1/studies", json={"name": "s"})
    run = assert_error(client.post("/v1/studies/s/runs", json=make_run(0, n_params=1e16)), 422, "validation_error")
    target = assert_error(
        client.get("/v1/studies/s/recommendation", params={"n_params": 1e16, "tokens": 1e12}), 422, "validation_error"
    )
    assert run["details"][0]["message"] == target["details"][0]["message"] == "must be ≤ 1e+15"
    low = assert_error(client.post("/v1/studies/s/runs", json=make_run(0, learning_rate=0)), 422, "validation_error")
    assert low["details"][0]["message"] == "must be > 0"


def test_the_study_list_has_run_counts_and_latest_fits(client: TestClient) -> None:
    for name, n in (("a", 3), ("b", 0)):
        client.post("/v1/studies", json={"name": name})
        if n:
            client.post(f"/v1/studies/{name}/runs", json={"runs": [make_run(i) for i in range(n)]})
    listed = {s["name"]: s for s in client.get("/v1/studies").json()["items"]}
    assert (listed["a"]["run_count"], listed["b"]["run_count"]) == (3, 0)
    assert listed["a"]["latest_fit_id"] is None
    assert listed["a"] == {**client.get("/v1/studies/a").json()}


# --- a loss law without a learning-rate law ------------------------------------------------------


def chinchilla_runs() -> list[dict]:
    """Chinchilla's measurements as runs: one per (N, D), the same learning rate and batch for all."""
    with (SHARED_DATA / "chinchilla_epoch.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "run_key": f"chinchilla-{i}",
            "n_params": float(r["Model Size"]),
            "tokens": float(r["Training FLOP"]) / (6 * float(r["Model Size"])),
            "learning_rate": 2e-4,
            "batch_size": 256,
            "final_loss": float(r["loss"]),
        }
        for i, r in enumerate(rows)
    ]


def test_a_loss_law_study_gets_predicted_loss_where_no_lr_law_exists(client: TestClient) -> None:
    """Issue item 9: 409 'learning rate is not swept' at every target, although the loss law answers."""
    client.post("/v1/studies", json={"name": "chinchilla"})
    assert client.post("/v1/studies/chinchilla/runs", json={"runs": chinchilla_runs()}).status_code == 201
    fit = client.post("/v1/studies/chinchilla/fits", json={"bootstrap": 20}).json()
    assert fit["loss_law"] is not None and "learning_rate" not in fit["laws"]
    target = {"n_params": 7e10, "tokens": 1.4e12}
    rec = client.get("/v1/studies/chinchilla/recommendation", params=target)
    assert rec.status_code == 200, rec.text[:500]
    answer = rec.json()
    loss = answer["predicted_loss"]
    assert loss["low"] < loss["value"] < loss["high"] and 1.5 < loss["value"] < 2.5
    assert answer["learning_rate"] is None and answer["batch_size"] is None and answer["weight_decay"] is None
    for field in ("learning_rate", "batch_size", "weight_decay", "per_layer"):
        assert any(w.startswith(f"{field} is null") for w in answer["warnings"]), field
    assert answer["extrapolation"]["level"] in ("extrapolation", "far")  # 1.4T tokens: beyond the data
    inside = client.get("/v1/studies/chinchilla/recommendation", params={"n_params": 1e9, "tokens": 2e10}).json()
    assert inside["extrapolation"]["level"] == "interpolation"
    # a FLOP budget: the compute-optimal allocation and its loss
    budget = client.get("/v1/studies/chinchilla/recommendation", params={"compute": 5.76e23}).json()
    assert budget["compute_optimal"]["n_params"]["value"] > 1e10 and budget["predicted_loss"] is not None
    missing = assert_error(
        client.get("/v1/studies/chinchilla/recommendation", params={"n_params": 7e10}), 422, "validation_error"
    )
    assert missing["details"][0]["field"] == "tokens"
