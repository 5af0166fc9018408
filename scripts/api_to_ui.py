"""Ship each API-format workflow also in the UI (LiteGraph, schema 0.4) format users drag into ComfyUI.

    python scripts/api_to_ui.py example_workflows/api/X.api.json [...] [--check]

writes example_workflows/X.json for each example_workflows/api/X.api.json (the folder ComfyUI lists as
templates holds UI-format files only); with --check it writes nothing and exits 1 when a UI file is
missing or out of date. ``ui_to_api`` goes back the way the frontend's graphToPrompt does.

The rules for which inputs are widgets, and the order of ``widgets_values``, are those of
comfyui-frontend-package 1.27.10 (the one ComfyUI v0.3.64 pins), read from its sources:
- ``services/litegraphService.ts`` ``#addInputs``: inputs in ``input_order`` (required, then optional,
  then any input the order does not name); a socket for every input whose type has no widget or that
  has ``forceInput``, then one widget per widget input, each also getting a socket tied to it.
- ``scripts/widgets.ts`` ``ComfyWidgets``: the types that have widgets.
- ``useIntWidget.ts``: an INT with ``control_after_generate`` (or, when the option is absent, named
  ``seed``/``noise_seed``) gets a "control_after_generate" combo right after it; ``useComboWidget.ts``:
  a combo with ``control_after_generate`` gets that combo and a "control_filter_list" string.
- ``extensions/core/uploadImage.ts``: a required combo with ``image_upload`` (or video/animated) makes
  the node gain a required ``upload`` input, not in ``input_order``, whose button widget has the value
  "image".
- ``LGraphNode.serialize``: ``widgets_values`` holds every widget whose ``serialize`` is not false;
  the control, filter and upload widgets set only ``options.serialize = false``, so their values are
  stored there, but ``graphToPrompt`` (``utils/executionUtil.ts``) leaves them out of the prompt.
- ``compressWidgetInputSlots`` (``utils/litegraphUtil.ts``): the exported workflow keeps a widget's
  socket only while it is linked, and a link's target slot indexes that shortened list.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

PACK_DIR = str(Path(__file__).resolve().parent.parent)
if PACK_DIR not in sys.path:  # appended: first on the path, the pack's nodes/ would shadow ComfyUI's nodes.py
    sys.path.append(PACK_DIR)

WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "IMAGEUPLOAD"}
# Frontend widget types this converter does not lay out (their values need their own rules).
UNSUPPORTED_WIDGET_TYPES = {"MARKDOWN", "FILEUPLOAD", "COLOR", "IMAGECOMPARE", "TREESELECT", "MULTISELECT",
                            "CHART", "GALLERIA", "SELECTBUTTON", "TEXTAREA"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUE = "fixed"  # the seed stays as shipped, so a queued run reproduces the API workflow
UPLOAD_VALUE = "image"   # the upload button's value, written to widgets_values though never sent

MODE_ALWAYS, MODE_NEVER = 0, 2
COLUMN_WIDTH, NODE_WIDTH, MARGIN, TITLE_HEIGHT, GAP = 380, 320, 50, 30, 40
GROUP_PAD, GROUP_TITLE, NOTE_WIDTH = 20, 50, 420
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # frontend-only: graphToPrompt leaves them out of the prompt


@dataclass(frozen=True)
class Layout:
    """How a person reads the graph (``<name>.layout.json`` beside the API file): groups left to right, each
    a stage of the job; a note with the model files; nodes whose widgets are rarely changed, collapsed."""
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    note: str = ""
    collapsed: frozenset[str] = frozenset()

    @classmethod
    def beside(cls, api_path: Path) -> "Layout":
        path = api_path.with_name(api_path.name[:-len(".api.json")] + ".layout.json")
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(tuple((g["title"], tuple(g["nodes"])) for g in raw.get("groups", [])), raw.get("note", ""),
                   frozenset(raw.get("collapsed", [])))

    def check(self, prompt: dict) -> None:
        grouped = [n for _, nodes in self.groups for n in nodes]
        missing, extra = set(prompt) - set(grouped), set(grouped) - set(prompt)
        if self.groups and (missing or extra or len(grouped) != len(set(grouped))):
            raise ValueError(f"layout groups must hold every node once: missing {sorted(missing)}, unknown "
                             f"{sorted(extra)}, repeated {sorted({n for n in grouped if grouped.count(n) > 1})}")
        if not self.collapsed <= set(prompt):
            raise ValueError(f"layout collapses unknown nodes {sorted(self.collapsed - set(prompt))}")


@dataclass(frozen=True)
class InputSpec:
    """One input of a node definition, as the frontend sees it."""
    name: str
    type: str          # "COMBO" for a list of choices
    options: dict
    optional: bool

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES | UNSUPPORTED_WIDGET_TYPES and not self.options.get("forceInput")

    def default(self):
        """What the widget holds before a value is set (the frontend's widget constructors)."""
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO":
            return (self.options.get("options") or [None])[0]
        return {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(self.type)


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of ``widgets_values``: the input it belongs to, and whether the prompt carries it."""
    input: str
    kind: str  # "value", or "control"/"filter"/"upload", which the prompt leaves out

    @property
    def sent(self) -> bool:
        return self.kind == "value"


def object_info(class_types=None) -> dict:
    """Node definitions as the booted host's /object_info serves them (server.py ``node_info``)."""
    import nodes
    from comfy_api.internal import _ComfyNodeInternal

    defs = {}
    for name in class_types or nodes.NODE_CLASS_MAPPINGS:
        if name not in nodes.NODE_CLASS_MAPPINGS:
            raise KeyError(f"node type {name!r} is not registered in the host; is its pack installed?")
        cls = nodes.NODE_CLASS_MAPPINGS[name]
        if issubclass(cls, _ComfyNodeInternal):
            info = cls.GET_NODE_INFO_V1()
        else:
            inputs = cls.INPUT_TYPES()
            info = {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                    "output": cls.RETURN_TYPES, "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
                    "name": name, "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}
        defs[name] = json.loads(json.dumps(info))  # what the frontend receives: enums become strings
    return defs


def _spec(name: str, raw: list, optional: bool) -> InputSpec:
    kind, options = raw[0], dict(raw[1]) if len(raw) > 1 and raw[1] else {}
    if isinstance(kind, list):
        kind, options = "COMBO", {**options, "options": kind}
    return InputSpec(name, kind, options, optional)


def input_specs(defn: dict) -> list[InputSpec]:
    """Inputs in the order the frontend creates them (``getOrderedInputSpecs``), with the upload input
    the Comfy.UploadImage extension adds."""
    inputs = defn.get("input", {})
    specs = {}
    for section, optional in (("required", False), ("optional", True)):
        for name, raw in (inputs.get(section) or {}).items():
            specs[name] = _spec(name, raw, optional)
    upload = next((s for s in specs.values() if not s.optional and s.type == "COMBO"
                   and any(s.options.get(o) is True for o in UPLOAD_OPTIONS)), None)
    if upload:
        # Appended to `required`, so before the optional inputs when there is no input_order.
        specs = {**{k: s for k, s in specs.items() if not s.optional},
                 "upload": InputSpec("upload", "IMAGEUPLOAD", {"imageInputName": upload.name}, False),
                 **{k: s for k, s in specs.items() if s.optional}}
    order = defn.get("input_order")
    if not order:
        return list(specs.values())
    ordered = [specs[n] for n in order.get("required", []) if n in specs and not specs[n].optional]
    ordered += [specs[n] for n in order.get("optional", []) if n in specs and specs[n].optional]
    return ordered + [s for s in specs.values() if s not in ordered]


def widget_slots(defn: dict) -> list[WidgetSlot]:
    """The entries of ``widgets_values`` for a node of this definition, in order."""
    slots = []
    for spec in input_specs(defn):
        if not spec.is_widget:
            continue
        if spec.type in UNSUPPORTED_WIDGET_TYPES:
            raise ValueError(f"{defn.get('name')}.{spec.name}: widget type {spec.type} is not supported by "
                             f"api_to_ui; add its widgets_values rule from the frontend's widget constructor.")
        if spec.type == "IMAGEUPLOAD":
            slots.append(WidgetSlot(spec.name, "upload"))
            continue
        slots.append(WidgetSlot(spec.name, "value"))
        control = spec.options.get("control_after_generate")
        if spec.type == "INT" and (control if "control_after_generate" in spec.options else spec.name in SEED_NAMES):
            slots.append(WidgetSlot(spec.name, "control"))
        elif spec.type == "COMBO" and control:
            slots += [WidgetSlot(spec.name, "control"), WidgetSlot(spec.name, "filter")]
    return slots


def outputs_of(defn: dict) -> list[tuple[str, str]]:
    """(name, type) of each output; a list of choices is a COMBO output."""
    types = defn.get("output") or []
    names = defn.get("output_name") or types
    return [(names[i] or f"output_{i}", "COMBO" if isinstance(t, list) else t) for i, t in enumerate(types)]


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _definition(defs: dict, class_type: str, node_id) -> dict:
    if class_type not in defs:
        raise KeyError(f"node {node_id}: type {class_type!r} has no definition; is its pack installed?")
    return defs[class_type]


def depths(prompt: dict) -> dict[str, int]:
    """Longest chain of links from a node without linked inputs: the column a node is laid out in."""
    memo: dict[str, int] = {}

    def depth(node_id, seen=()):
        if node_id in seen:
            raise ValueError(f"node {node_id} is part of a cycle of links")
        if node_id not in memo:
            parents = [v[0] for v in prompt[node_id]["inputs"].values() if _is_link(v)]
            memo[node_id] = 1 + max((depth(p, seen + (node_id,)) for p in parents), default=-1)
        return memo[node_id]

    return {k: depth(k) for k in prompt}


# Room for the region-grid panel js/cupscale.js adds to these nodes, so they don't cover the next node.
REGION_PANEL_HEIGHT = {"TiledBlendedDiffusion": 224, "MLLMRegionCaptioner": 224}


def _height(n_sockets: int, n_outputs: int, slots: list[WidgetSlot], specs: dict[str, InputSpec],
            panel: bool = False) -> int:
    """About the height litegraph's computeSize gives (20 px a slot row, 24 a widget); big for text
    boxes and for the image preview of an upload node. Advanced widgets are hidden (js/cupscale.js), but
    frontend 1.27 still lays them out: a node with a region panel below them counts them, or the panel would
    hang below the node, out of its clicks."""
    slots = [s for s in slots if panel or not specs[s.input].options.get("advanced")]
    height = max(n_sockets, n_outputs, 1) * 20 + len(slots) * 24 + 10
    height += sum(80 for s in slots if s.sent and specs[s.input].options.get("multiline"))
    return height + (250 if any(s.kind == "upload" for s in slots) else 0)


def api_to_ui(prompt: dict, defs: dict, layout: Layout = Layout()) -> dict:
    """The UI-format workflow the frontend would export for this API-format prompt, laid out by ``layout``."""
    for node_id in prompt:
        if not node_id.isdigit():
            raise ValueError(f"node id {node_id!r}: the UI format needs integer node ids")
    ids = sorted(prompt, key=int)
    layout.check(prompt)
    depth = depths(prompt)
    # Execution order: by column, then id (LGraph recomputes `order` on load anyway).
    order = {k: i for i, k in enumerate(sorted(ids, key=lambda k: (depth[k], int(k))))}

    links, nodes = [], []
    outputs: dict[str, list[dict]] = {}
    for node_id in ids:
        outputs[node_id] = [{"name": n, "type": t, "links": None, "slot_index": i}
                            for i, (n, t) in enumerate(outputs_of(_definition(defs, prompt[node_id]["class_type"],
                                                                             node_id)))]
    for node_id in ids:
        node = prompt[node_id]
        defn = _definition(defs, node["class_type"], node_id)
        specs = {s.name: s for s in input_specs(defn)}
        values = dict(node.get("inputs", {}))
        unknown = set(values) - set(specs)
        if unknown:
            raise ValueError(f"node {node_id} ({node['class_type']}): inputs {sorted(unknown)} are not in its "
                             f"definition ({', '.join(specs)})")

        def link_to(name, value, slot):
            origin, origin_slot = value
            if origin not in prompt:
                raise ValueError(f"node {node_id}.{name}: links to node {origin}, which is not in the workflow")
            out = outputs[origin][origin_slot]
            link_id = len(links) + 1
            links.append([link_id, int(origin), origin_slot, int(node_id), slot, out["type"]])
            out["links"] = (out["links"] or []) + [link_id]
            return link_id

        inputs = []
        for spec in specs.values():
            if spec.is_widget:
                continue
            value = values.get(spec.name)
            if value is not None and not _is_link(value):
                raise ValueError(f"node {node_id}.{spec.name}: a {spec.type} input takes a link "
                                 f"[node_id, slot], got {value!r}")
            if value is None and not spec.optional:
                raise ValueError(f"node {node_id}.{spec.name}: required input is not linked")
            link = link_to(spec.name, value, len(inputs)) if value else None
            inputs.append({"name": spec.name, "type": spec.type, "link": link})

        slots = widget_slots(defn)
        widgets_values = []
        for slot in slots:
            if slot.kind != "value":
                widgets_values.append({"control": CONTROL_VALUE, "filter": "", "upload": UPLOAD_VALUE}[slot.kind])
                continue
            spec = specs[slot.input]
            value = values.get(slot.input)
            if _is_link(value):  # a widget input driven by a link keeps its widget, and a socket
                inputs.append({"name": spec.name, "type": spec.type, "widget": {"name": spec.name},
                               "link": link_to(spec.name, value, len(inputs))})
                value = spec.default()
            elif slot.input not in values:
                if not spec.optional:
                    raise ValueError(f"node {node_id}.{slot.input}: required input has no value")
                value = spec.default()  # the frontend always has the widget, at its default
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                value = value["__value__"]
            widgets_values.append(value)

        panel = REGION_PANEL_HEIGHT.get(node["class_type"], 0)
        height = _height(sum(1 for i in inputs if "widget" not in i), len(outputs[node_id]), slots, specs,
                         bool(panel)) + panel
        ui_node = {"id": int(node_id), "type": node["class_type"], "pos": [0, 0], "size": [NODE_WIDTH, height],
                   "flags": {"collapsed": True} if node_id in layout.collapsed else {}, "order": order[node_id],
                   "mode": MODE_ALWAYS, "inputs": inputs, "outputs": outputs[node_id]}
        title = node.get("_meta", {}).get("title")
        if title and title != defn.get("display_name", node["class_type"]):
            ui_node["title"] = title
        ui_node["properties"] = {"Node name for S&R": node["class_type"]}
        downloads = [{"name": v, "url": DOWNLOADS[v][0], "directory": DOWNLOADS[v][1]}
                     for v in widgets_values if isinstance(v, str) and v in DOWNLOADS]
        if downloads:
            ui_node["properties"]["models"] = downloads
        ui_node["widgets_values"] = widgets_values
        nodes.append(ui_node)

    last_id = max((int(k) for k in ids), default=0)
    groups = place(nodes, depth, layout, left=MARGIN + (NOTE_WIDTH + COLUMN_WIDTH - NODE_WIDTH if layout.note else 0))
    if layout.note:
        last_id += 1
        nodes.insert(0, {"id": last_id, "type": "Note", "pos": [MARGIN, MARGIN + GROUP_TITLE],
                         "size": [NOTE_WIDTH, 24 + 19 * sum(1 + len(line) // 58 for line in layout.note.splitlines())],
                         "flags": {}, "order": len(ids), "mode": MODE_ALWAYS, "inputs": [], "outputs": [],
                         "title": "Models and settings", "properties": {}, "widgets_values": [layout.note],
                         "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": last_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": groups,
            "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


DOWNLOADS = {
    "sd_xl_base_1.0.safetensors":
        ("https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
         "checkpoints"),
    "flux1-dev-fp8.safetensors":
        ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev-fp8.safetensors", "checkpoints"),
    "v1-5-pruned-emaonly.safetensors":
        ("https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly.safetensors",
         "checkpoints"),
    "z_image_turbo_bf16.safetensors":
        ("https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/diffusion_models/"
         "z_image_turbo_bf16.safetensors", "diffusion_models"),
    "qwen_3_4b.safetensors":
        ("https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/text_encoders/qwen_3_4b.safetensors",
         "text_encoders"),
    "ae.safetensors":
        ("https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/vae/ae.safetensors", "vae"),
}
"""Where the frontend's missing-models panel downloads a model file a template names (``properties.models`` of the
loader, as ComfyUI's own templates give it); files without a direct link (LIIF's, XPSR's, the VLMs) are named
in each template's note instead."""


def place(nodes: list[dict], depth: dict[str, int], layout: Layout, left: int) -> list[dict]:
    """Positions for ``nodes`` and the groups around them: each group (a stage) to the right of the last, its
    nodes in columns by their depth in the graph, stacked top down; returns the UI's group entries."""
    by_id = {str(n["id"]): n for n in nodes}
    groups, x = [], left
    for title, members in layout.groups or (("", tuple(by_id)),):
        columns = sorted({depth[m] for m in members})
        bottom = top = MARGIN + GROUP_TITLE + TITLE_HEIGHT
        for col, d in enumerate(columns):
            y = top
            for m in sorted((m for m in members if depth[m] == d), key=int):
                node = by_id[m]
                node["pos"] = [x + col * COLUMN_WIDTH, y]
                y += (0 if node["flags"].get("collapsed") else node["size"][1]) + TITLE_HEIGHT + GAP
            bottom = max(bottom, y)
        width = (len(columns) - 1) * COLUMN_WIDTH + NODE_WIDTH
        if title:
            groups.append({"title": title, "bounding": [x - GROUP_PAD, top - TITLE_HEIGHT - GROUP_TITLE + GROUP_PAD,
                                                        width + 2 * GROUP_PAD, bottom - top + GROUP_TITLE],
                           "color": "#3f789e", "font_size": 24, "flags": {}})
        x += width + COLUMN_WIDTH - NODE_WIDTH + 2 * GROUP_PAD
    return groups


def ui_to_api(ui: dict, node_defs: dict) -> dict:
    """The prompt graphToPrompt makes of a UI-format workflow of plain nodes: every widget the prompt
    carries becomes a named input, every linked input ``[origin_id, origin_slot]``; muted nodes drop out."""
    links = {link[0]: link for link in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", MODE_ALWAYS) == MODE_NEVER or node["type"] in VIRTUAL_NODES:
            continue
        if node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            raise ValueError(f"node {node['id']}: mode {node['mode']} (bypass?) is not supported by ui_to_api")
        defn = _definition(node_defs, node["type"], node["id"])
        slots = widget_slots(defn)
        values = node.get("widgets_values") or []
        if isinstance(values, dict) or len(values) != len(slots):
            raise ValueError(f"node {node['id']} ({node['type']}): widgets_values {values!r} does not match "
                             f"its widgets {[s.input + ('' if s.sent else ':' + s.kind) for s in slots]}")
        inputs = {}
        for slot, value in zip(slots, values):
            if slot.sent:
                inputs[slot.input] = {"__value__": value} if isinstance(value, list) else value
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), int(link[2])]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title") or defn.get("display_name", node["type"])}}
    muted = {str(n["id"]) for n in ui["nodes"] if str(n["id"]) not in prompt and n["type"] not in VIRTUAL_NODES}
    for entry in prompt.values():
        entry["inputs"] = {k: v for k, v in entry["inputs"].items()
                           if not (isinstance(v, list) and len(v) == 2 and v[0] in muted)}
    return prompt


def ui_path(api_path: Path) -> Path:
    if not api_path.name.endswith(".api.json"):
        raise ValueError(f"{api_path}: expected an API-format workflow named <name>.api.json")
    return api_path.parent.parent / (api_path.name[:-len(".api.json")] + ".json")


def render(api_path: Path, defs: dict | None = None) -> str:
    """The UI file's text for an API-format workflow file."""
    prompt = json.loads(api_path.read_text())
    defs = defs or object_info({v["class_type"] for v in prompt.values()})
    return json.dumps(api_to_ui(prompt, defs, Layout.beside(api_path)), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflows", nargs="+", type=Path, help="API-format workflows (<name>.api.json)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a UI file would change")
    args = p.parse_args(argv)

    from harness import comfy_host
    comfy_host.boot()
    stale = []
    for api_path in args.workflows:
        target, text = ui_path(api_path), render(api_path)
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target)
        elif not target.exists() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(f"out of date: {', '.join(map(str, stale))}; run python scripts/api_to_ui.py "
              f"{' '.join(map(str, args.workflows))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
