"""Under load and faults (issue 15), short: one real ComfyUI server, the functions of bench/soak.py.

Hostile input over HTTP is answered by a validation or node error naming the input, and the server serves the
next prompt; four websocket clients each get their own results; interrupts at random points of C-Upscale (during
captioning, during sampling) leave the rerun bitwise equal and the shared MODEL without patch or run state; a
short soak of alternating workflows keeps the caches within their limits and repeats its first image bitwise.
``python bench/soak.py`` runs the long version (200 runs, 20 interrupts) and prints the README's tables.
"""
from __future__ import annotations

import sys

import pytest

from harness.comfy_host import PACK_DIR

sys.path.append(str(PACK_DIR / "bench"))
import soak  # noqa: E402

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return soak.build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    with soak.server(root, tmp_path_factory.mktemp("soak")) as s:
        yield s


def test_hostile_input_is_answered_naming_the_input_and_the_server_serves_on(server, root):
    faults = soak.hostile(server, root, log=lambda *a: None)
    assert [f.case for f in faults if not f.named] == [], soak.tables(None, [], faults, [])
    assert all(f.alive for f in faults)
    assert not (root / "PWNED").exists()  # the pickle's code never ran


@pytest.fixture(scope="module")
def schema_suite(server):
    return soak.schema_suite(server, log=lambda *a: None)


def test_every_input_of_every_pack_node_holds_against_the_cases_its_schema_makes(schema_suite):
    """Issue 26: the cases harness/hostile_cases.py makes from /object_info, sent over HTTP; each refused by
    /prompt where the value alone decides, else answered by a run or an error naming its input; after each, an
    ordinary prompt gives its pixels again."""
    suite = schema_suite
    nodes = {v.case.node_type for v in suite.verdicts}
    # every pack node has a base graph, and each base with inputs to try is used
    assert nodes == set(soak.schema_bases()) - soak.WITHOUT_CASES
    faults = [f"{v.case.name}: {v.fault}: {v.message[:200]}" for v in suite.verdicts if v.fault]
    assert faults == [], "\n".join(faults) + "\n" + soak.tables(None, [], [], [], suite)


@pytest.mark.xfail(strict=True, reason="the server keeps 140-380 MiB more after the schema cases than before them, "
                   "after a warm-up of every base graph too (seen on v0.33.0 and v0.3.64, 2026-12-07); not yet "
                   "found where")
def test_the_schema_cases_leave_the_servers_memory_within_100_mib(schema_suite):
    assert schema_suite.rss_after - schema_suite.rss_before < 100 * 2 ** 20, soak.tables(None, [], [], [], schema_suite)


def test_four_concurrent_websocket_clients_each_get_their_own_results(server):
    results = soak.concurrent(server, 4)
    assert len({prompt_id for prompt_id, _ in results}) == 4 and all(ok for _, ok in results)


def test_interrupted_runs_rerun_bitwise_equal_and_leave_no_state_on_the_shared_model(server):
    rows = soak.interrupts(server, 2, seed=1, log=lambda *a: None)
    assert {r.phase for r in rows} == {"captioning", "sampling"}
    assert all(r.rerun_equal and r.shared_clean and r.patched_clean for r in rows), rows
    assert any(r.status == "interrupted" for r in rows), rows


def test_short_soak_stays_within_cache_limits_and_repeats_its_first_image(server):
    result = soak.soak(server, runs=6, alternate=3, log=lambda *a: None)
    assert result.failures == [] and result.first_equals_last
    assert set(result.sizes["C-Upscale"]) == {(192, 128), (128, 128), (256, 128)}
    caches = result.caches
    assert caches["caption cache"]["entries"] <= int(soak.LIMITS["CUPSCALE_CAPTION_CACHE_ENTRIES"])
    assert caches["sampling grids"]["entries"] <= int(soak.LIMITS["CUPSCALE_GRID_CACHE_ENTRIES"])
    assert caches["peaks"]["tile grids"]["entries"] <= int(soak.LIMITS["CUPSCALE_TILE_GRIDS"])
    assert result.rss_end - result.rss_warm < 200 * 2 ** 20  # a loose bound for 6 runs; the bench measures 200
