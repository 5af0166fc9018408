"""The hostile-input cases made from node schemas (harness/hostile_cases.py), without a host: every input of a
schema in /object_info's layout gets its cases, each a base graph with that input alone made hostile, and the
verdict names what fell short. tests/test_soak.py sends them to a real server."""
from __future__ import annotations

import copy
import json
import math

import pytest

from harness.hostile_cases import PATHS, SHAPES, Case, Verdict, cases, counts, inputs_of, pack_schemas, text_values

pytestmark = pytest.mark.hostfree

PACK = "custom_nodes.comfyui-cupscale"
OBJECT_INFO = {  # the layout GET /object_info answers with: old-style list dropdowns and V3 COMBO ones
    "Guide": {"python_module": PACK, "category": "cupscale", "input": {
        "required": {"model": ["MODEL"], "reference": ["LATENT"],
                     "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 64.0, "step": 0.1}],
                     "lowpass": [["gaussian", "fft"], {}]},
        "optional": {"steps": ["INT", {"default": 4, "min": 1, "max": 100}],
                     "model_name": ["COMBO", {"options": ["tiny.pth", "runs_code.pth", ".."]}],
                     "text": ["STRING", {"multiline": True}], "flag": ["BOOLEAN", {"default": True}]},
        "hidden": {"unique_id": "UNIQUE_ID"}}},
    "Capture": {"python_module": PACK, "category": "cupscale/testing", "input": {"required": {}}},
    "KSampler": {"python_module": "nodes", "category": "sampling", "input": {"required": {}}},
}
BASE = {"ld": {"class_type": "Loader", "inputs": {}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "g": {"class_type": "Guide", "inputs": {"model": ["ld", 0], "reference": ["lat", 0], "sigma": 1.0,
                                                "lowpass": "gaussian", "steps": 4, "model_name": "tiny.pth",
                                                "text": "", "flag": True}}}


def made(**kw) -> list[Case]:
    return cases(pack_schemas(OBJECT_INFO, PACK), {"Guide": (BASE, "g")}, **kw)


def by_label(all_cases: list[Case], name: str) -> dict[str, Case]:
    return {c.label: c for c in all_cases if c.input == name}


def test_the_pack_nodes_are_read_from_object_info_without_the_testing_ones():
    assert list(pack_schemas(OBJECT_INFO, PACK)) == ["Guide"]
    kinds = {name: kind for name, kind, _ in inputs_of(OBJECT_INFO["Guide"])}
    assert kinds == {"model": "MODEL", "reference": "LATENT", "sigma": "FLOAT", "lowpass": "COMBO", "steps": "INT",
                     "model_name": "COMBO", "text": "STRING", "flag": "BOOLEAN"}  # hidden inputs are not a client's


def test_each_case_changes_its_one_input_and_leaves_the_base_alone():
    base = copy.deepcopy(BASE)
    all_cases = made()
    assert BASE == base
    assert {c.input for c in all_cases} == {"reference", "sigma", "lowpass", "steps", "model_name", "text"}
    for c in all_cases:
        changed = {(k, name) for k, node in c.prompt.items() for name, value in node["inputs"].items()
                   if k not in BASE or json.dumps(value) != json.dumps(BASE[k]["inputs"].get(name))}
        producer = [k for k in c.prompt if k not in BASE]
        assert changed == {("g", c.input)} | {(k, name) for k in producer for name in ("kind", "shape")}, c.name
        assert c.node == "g" and c.node_type == "Guide"


def test_tensors_come_from_the_harness_node_in_every_hostile_shape():
    tensors = by_label(made(), "reference")
    assert set(tensors) == set(SHAPES) and {c.expect for c in tensors.values()} == {"safe"}
    for shape, c in tensors.items():
        producer = c.prompt["g"]["inputs"]["reference"][0]
        assert c.prompt[producer] == {"class_type": "CupscaleHostileTensor", "inputs": {"kind": "LATENT", "shape": shape}}


def test_numbers_the_value_alone_rules_out_must_be_refused_by_the_server():
    sigma = by_label(made(), "sigma")
    assert {label for label, c in sigma.items() if c.expect == "refused"} == \
        {"NaN", "inf", "-inf", "text", "huge", "-huge", "below min", "above max", "0", "-1"}
    assert math.isnan(sigma["NaN"].prompt["g"]["inputs"]["sigma"]) and sigma["below min"].prompt["g"]["inputs"]["sigma"] < 0.1
    steps = by_label(made(), "steps")
    assert steps["huge"].prompt["g"]["inputs"]["steps"] == 2 ** 63 and steps["above max"].prompt["g"]["inputs"]["steps"] == 101
    assert math.isnan(json.loads(json.dumps(sigma["NaN"].prompt))["g"]["inputs"]["sigma"])  # as a client sends it


def test_dropdowns_get_every_path_no_list_offers_and_the_planted_files_it_does():
    lowpass = by_label(made(), "lowpass")
    assert {c.prompt["g"]["inputs"]["lowpass"] for c in lowpass.values()} == {*PATHS, 3}
    assert {c.expect for c in lowpass.values()} == {"refused"}
    names = by_label(made(planted={"runs_code.pth": "that runs code", "gone.pth": "not listed"}), "model_name")
    assert ".." not in {c.prompt["g"]["inputs"]["model_name"] for c in names.values() if c.expect == "refused"}
    assert names["planted file that runs code"].expect == "named" and "planted file not listed" not in names


def test_text_gets_every_hostile_text_and_inputs_checked_at_the_run_must_be_named():
    texts = {label: value for label, value, _ in text_values()}
    assert {c.label for c in made() if c.input == "text"} == set(texts) and len(texts["5 MB"]) == 5 * 2 ** 20
    later = by_label(made(at_run={"Guide": {"sigma"}}), "sigma")
    assert later["NaN"].expect == "named" and later["0"].expect == "named" and later["huge"].expect == "named"


def test_a_node_without_a_base_graph_or_with_a_wrong_one_is_named():
    with pytest.raises(KeyError, match="no base graph for Guide"):
        cases(pack_schemas(OBJECT_INFO, PACK), {})
    with pytest.raises(ValueError, match="the base graph for Guide has Loader at node ld"):
        cases(pack_schemas(OBJECT_INFO, PACK), {"Guide": (BASE, "ld")})


@pytest.mark.parametrize("expect, where, at, message, alive, fault", [
    ("refused", "validation", "g", "sigma = nan must be a finite number", True, None),
    ("refused", "run", "g", "sigma = nan must be a finite number", True, "not refused by /prompt (run)"),
    ("refused", "none", "", "success", True, "not refused by /prompt (none)"),
    ("named", "run", "g", "ValueError: sigma = nan must be a finite number", True, None),
    ("named", "none", "", "success", True, "it ran"),
    ("safe", "none", "", "success", True, None),
    ("safe", "run", "ks", "RuntimeError: max(): Expected reduction dim", True, "the error names node 'ks', not 'g'"),
    ("safe", "run", "g", "ZeroDivisionError: division by zero", True, "the error does not name the input"),
    ("safe", "timeout", "", "prompt p did not finish in 120 s", True,
     "no answer within the runner's time limit (the run was interrupted)"),
    ("safe", "none", "", "success", False, "the server stopped serving, or the next ordinary prompt's pixels changed"),
])
def test_the_verdict_names_what_fell_short(expect, where, at, message, alive, fault):
    case = Case("Guide", "sigma", "NaN", "g", BASE, expect)
    verdict = Verdict(case, where, at, message, alive)
    assert verdict.fault == fault
    assert counts([verdict, Verdict(case, "validation", "g", "sigma", True)]) == {"Guide": (2, int(fault is not None))}
