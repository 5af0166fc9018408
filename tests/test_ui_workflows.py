"""Every shipped API workflow has a UI twin that the frontend turns back into the same prompt."""
from __future__ import annotations

import json

import pytest

from harness.workflows import WORKFLOWS

API_FILES = sorted(WORKFLOWS.glob("*.api.json"))


@pytest.fixture(scope="module")
def api_to_ui(host):
    """scripts/api_to_ui.py, imported once the host is up: scripts_path puts the pack root first on
    sys.path, where its nodes/ would shadow ComfyUI's nodes.py for a boot still to come."""
    import scripts_path  # noqa: F401
    import api_to_ui
    return api_to_ui


@pytest.fixture(scope="module")
def defs(api_to_ui):
    return api_to_ui.object_info()


def with_widget_defaults(api_to_ui, prompt: dict, defs: dict) -> dict:
    """The prompt as the frontend sends it: optional widget inputs an API file leaves out go at their
    default, since a UI node always has the widget."""
    full = {}
    for node_id, node in prompt.items():
        specs = {s.name: s for s in api_to_ui.input_specs(defs[node["class_type"]])}
        inputs = dict(node["inputs"])
        for slot in api_to_ui.widget_slots(defs[node["class_type"]]):
            if slot.sent and slot.input not in inputs:
                assert specs[slot.input].optional, f"node {node_id}: required {slot.input} missing"
                inputs[slot.input] = specs[slot.input].default()
        full[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    return full


def test_workflows_are_shipped():
    assert API_FILES, "no example_workflows/api/*.api.json"


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.name)
def test_ui_workflow_turns_back_into_the_api_workflow(api_to_ui, defs, api_path):
    ui_path = api_to_ui.ui_path(api_path)
    assert ui_path.exists(), f"{ui_path.name} missing: run python scripts/api_to_ui.py {api_path}"
    api, ui = json.loads(api_path.read_text()), json.loads(ui_path.read_text())
    back = api_to_ui.ui_to_api(ui, defs)
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in back.items()} == \
        with_widget_defaults(api_to_ui, api, defs)
    assert {k: v["_meta"]["title"] for k, v in back.items()} == \
        {k: v["_meta"]["title"] for k, v in api.items() if "_meta" in v}


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.name)
def test_ui_workflow_links_agree_with_node_slots(api_to_ui, api_path):
    ui = json.loads(api_to_ui.ui_path(api_path).read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"]) and ui["last_link_id"] >= max(links, default=0)
    for link_id, origin, origin_slot, target, target_slot, kind in ui["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        assert link_id in out["links"] and kind == out["type"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    for node in ui["nodes"]:
        for slot in node["inputs"]:
            if slot["link"] is not None:
                assert links[slot["link"]][3] == node["id"]
                assert node["inputs"][links[slot["link"]][4]] is slot
        for i, out in enumerate(node["outputs"]):
            for link_id in out["links"] or []:
                assert links[link_id][1:3] == [node["id"], i]


def test_ui_workflows_are_up_to_date(api_to_ui):
    from harness import comfy_host
    if comfy_host.release() != comfy_host.DEFAULT_RELEASE:
        pytest.skip(f"the shipped UI files are made from the default host's /object_info (v{comfy_host.DEFAULT_RELEASE}); "
                    f"v{comfy_host.release()}'s differs in node sizes and SaveImage's outputs")
    assert api_to_ui.main([*map(str, API_FILES), "--check"]) == 0


def test_seed_control_and_upload_values_sit_where_the_frontend_puts_them(api_to_ui, defs):
    sampler = api_to_ui.widget_slots(defs["KSampler"])
    assert [(s.input, s.kind) for s in sampler[:3]] == [("seed", "value"), ("seed", "control"), ("steps", "value")]
    assert [(s.input, s.kind) for s in api_to_ui.widget_slots(defs["LoadImage"])] == [("image", "value"),
                                                                                      ("upload", "upload")]


def test_a_linked_widget_input_keeps_its_widget_value_and_gets_a_socket(api_to_ui, defs):
    """A seed driven by a link: the socket is listed after the plain ones and the widget keeps a value."""
    prompt = {"1": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 3}},
              "2": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
              "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
              "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "5": {"class_type": "KSampler", "inputs": {
                  "model": ["1", 0], "seed": ["2", 0], "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                  "scheduler": "normal", "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                  "denoise": 1.0}}}
    ui = api_to_ui.api_to_ui(prompt, defs)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[1]["widgets_values"] == ["sd15", 3, "fixed"]  # named seed: a control without the option
    assert nodes[2]["widgets_values"] == [7, "fixed"]  # control_after_generate=True on a v3 node
    seed = nodes[5]["inputs"][-1]
    assert seed["name"] == "seed" and seed["widget"] == {"name": "seed"}
    assert [n["name"] for n in nodes[5]["inputs"]] == ["model", "positive", "negative", "latent_image", "seed"]
    assert next(link for link in ui["links"] if link[0] == seed["link"])[1:5] == [2, 0, 5, 4]
    assert nodes[5]["widgets_values"][:2] == [0, "fixed"]
    back = api_to_ui.ui_to_api(ui, defs)
    assert {k: v["inputs"] for k, v in back.items()} == {k: v["inputs"] for k, v in prompt.items()}


def test_each_checkpoint_a_template_names_comes_with_its_download():
    """The frontend's missing-models panel offers the file a loader names from the loader's properties.models."""
    for ui_path in sorted(WORKFLOWS.parent.glob("*.json")):
        for node in json.loads(ui_path.read_text())["nodes"]:
            if node["type"] == "CheckpointLoaderSimple":
                models = node["properties"].get("models", [])
                assert [m["name"] for m in models] == node["widgets_values"][:1], ui_path.name
                assert all(m["url"].startswith("https://huggingface.co/") and m["directory"] == "checkpoints"
                           for m in models), ui_path.name
