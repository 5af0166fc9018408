"""The pack as users meet it: ComfyUI's own frontend in Debian's Chromium, driven by Playwright.

A real server (harness.server.ComfyServer) serves the frontend and the pack's js/. The tests load the
shipped UI-format workflows into the canvas, check that every node type is known, that the region
panels draw the grid of cupscale/tiling/grid.py (js/grid.js is checked against it on many sizes), and edit a
region's prompt by clicking it: the JSON the editor writes is read back by the Python parser and
accepted by the server on the next run. Every template the server lists for the pack is opened as the
Templates browser opens it. Screenshots go to a temporary folder whose path is printed; with
CUPSCALE_DOCS=1 (scripts/make_docs.sh) the README's screenshots go to docs/ and each template's
thumbnail beside it, as small files.

Needs /usr/bin/chromium (bash scripts/install_browser.sh) and playwright (requirements-dev.txt); it
fails, never skips, when they are missing.
"""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageOps

import tiny_vlms
from cupscale.captioning.regions import image_grid
from cupscale.tiling.grid import region_grid
from cupscale.captioning.region_prompts import from_json, pixel_box
from harness.comfy_host import PACK_DIR
from harness.photos import photo
from harness.server import ComfyServer
from harness.workflows import TEMPLATES

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
INPUT_SIZE = (72, 40)  # width, height of the test's input.png
APP = "window.comfyAPI.app.app"
LOADING_APP = "window.comfyAPI?.app?.app"  # the frontend defines comfyAPI a moment after the page loads
DEBUG = f"{LOADING_APP}?.extensions.find((e) => e.name === 'cupscale.regions')?.debug"  # js/cupscale.js's test hooks


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI with the pack, an input image, a tiny VLM in models/LLM and no first-run dialogs."""
    base = tmp_path_factory.mktemp("comfy")
    (base / "input").mkdir()
    ImageOps.fit(photo("chelsea"), INPUT_SIZE).save(base / "input" / "input.png")  # a real photo, for the docs
    tiny_vlms.llava(base / "models" / "LLM" / "tiny-llava")
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True,
                                                                                   "Comfy.Minimap.Visible": False}))
    with ComfyServer(base) as server:  # its process runs with one thread, like the tests
        yield server


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nbrowser screenshots: {folder}")
    return folder


def keep(png: bytes, path: Path, width: int | None = None) -> None:
    """A screenshot kept for the README or as a template thumbnail (with CUPSCALE_DOCS=1): scaled to
    ``width`` and, for PNGs, reduced to 256 colours so the repo stays small."""
    if not os.environ.get("CUPSCALE_DOCS"):
        return
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    if path.suffix == ".png":
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True, **({"quality": 85} if path.suffix == ".jpg" else {}))


def show_graph_start(page, scale: float = 0.65) -> None:
    """The graph from its top left corner at ``scale``, large enough for the canvas to draw text: the note
    and the first groups, as a person opening the template first sees them."""
    page.evaluate(f"""(scale) => new Promise((resolve) => {{
        const app = {APP}
        const boxes = app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - 30])
            .concat(app.graph.groups.map((g) => g._bounding ?? g.bounding))
        const {{ ds }} = app.canvas
        ds.scale = scale
        ds.offset[0] = 40 - Math.min(...boxes.map((b) => b[0]))
        ds.offset[1] = 40 - Math.min(...boxes.map((b) => b[1]))
        app.graph.setDirtyCanvas(true, true)
        requestAnimationFrame(() => requestAnimationFrame(resolve))
    }})""", scale)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh` (installs Debian's chromium).")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -r requirements-dev.txt (never `playwright install`).")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1600, "height": 1000})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(server, browser_context):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and "cupscale" in m.text and errors.append(m.text))
    page.goto(server.url)
    page.wait_for_function(f"() => {LOADING_APP}?.graph && {LOADING_APP}.canvas && {DEBUG}?.ready", timeout=90_000)
    page.evaluate(f"""() => {APP}.registerExtension({{
        name: 'cupscale.test', afterConfigureGraph(missing) {{ window.cupscaleMissing = missing }} }})""")
    yield page
    assert not [e for e in errors if "cupscale" in e or "grid.js" in e or "sizes.js" in e], errors
    page.close()


def close_missing_models(page, offered: list[str]) -> None:
    """Frontends 1.38-1.4x open a "Missing Models" dialog over the canvas for the loaders' ``properties.models``
    whose files the server lacks, each with its download: it must list them; closed, as a user would."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    if not offered:
        return
    dialog = page.locator(".p-dialog", has_text="Missing Models")
    try:
        dialog.wait_for(state="visible", timeout=2000)
    except PlaywrightTimeout:
        return  # 1.27 has no such dialog; 1.48 shows a notice beside the canvas instead
    assert all(name in dialog.inner_text() for name in offered), dialog.inner_text()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden", timeout=5000)


def load_workflow(page, workflow: str | dict) -> dict[str, int]:
    """Load a shipped UI-format workflow (a file name, or the graph) into the canvas; node ids by type.
    Fails on missing nodes."""
    ui = json.loads((TEMPLATES / workflow).read_text()) if isinstance(workflow, str) else workflow
    result = page.evaluate(f"""async (ui) => {{
        window.cupscaleMissing = null
        await {APP}.loadGraphData(ui)
        const nodes = {APP}.graph.nodes
        const namesAbsentFile = (n) => (n.widgets ?? []).some((w) => w.type === 'combo'
            && Array.isArray(w.options?.values) && !w.options.values.includes(w.value))
        return {{missing: window.cupscaleMissing, broken: nodes.filter((n) => n.has_errors).map((n) => n.type),
                 absent: nodes.filter(namesAbsentFile).map((n) => n.type), nodes: nodes.map((n) => [n.type, n.id])}}
    }}""", ui)
    # Newer frontends (1.48) flag a loader naming a model file the server lacks (its missing-models panel offers
    # the download); nothing else may be flagged.
    assert result["missing"] == [] and set(result["broken"]) <= set(result["absent"]), result
    assert sorted(t for t, _ in result["nodes"]) == sorted(n["type"] for n in ui["nodes"])
    close_missing_models(page, [m["name"] for n in ui["nodes"] for m in n.get("properties", {}).get("models", [])])
    return {t: i for t, i in result["nodes"]}


def set_widgets(page, node_id: int, **values) -> None:
    page.evaluate(f"""([id, values]) => {{
        const node = {APP}.graph.getNodeById(id)
        for (const [name, value] of Object.entries(values)) node.widgets.find((w) => w.name === name).value = value
    }}""", [node_id, values])


def show(page, node_id: int) -> dict:
    """Scroll the node's region panel (its last 220 px) to the middle of the canvas and bring the node to
    the front (as selecting it does), let the canvas draw two frames, return what the panel holds."""
    return page.evaluate(f"""(id) => new Promise((resolve) => {{
        const app = {APP}
        const node = app.graph.getNodeById(id)
        const {{ ds, canvas }} = app.canvas
        ds.offset[0] = canvas.clientWidth / 2 / ds.scale - (node.pos[0] + node.size[0] / 2)
        ds.offset[1] = canvas.clientHeight / 2 / ds.scale - (node.pos[1] + node.size[1] - 110)
        app.canvas.bringToFront(node)
        app.graph.setDirtyCanvas(true, true)
        requestAnimationFrame(() => requestAnimationFrame(() => resolve({DEBUG}.regionsFor(id))))
    }})""", node_id)


def panel_clip(page, node_id: int, margin: int = 24) -> dict:
    """The node on screen with a margin, for a screenshot of its panel."""
    return page.evaluate(f"""([id, margin]) => {{
        const app = {APP}
        const node = app.graph.getNodeById(id)
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - 30])
        const rect = app.canvas.canvas.getBoundingClientRect()
        const s = app.canvas.ds.scale
        return {{x: Math.max(rect.left + x - margin, 0), y: Math.max(rect.top + y - margin, 0),
                 width: node.size[0] * s + 2 * margin, height: (node.size[1] + 30) * s + 2 * margin}}
    }}""", [node_id, margin])


def shown_when(page, node_id: int, condition: str) -> dict:
    """What the panel holds once ``condition`` (JavaScript over ``r = regionsFor(node_id)``) holds, e.g.
    once LoadImage's picture has loaded and the sizes are known, drawn on screen."""
    page.wait_for_function(f"(id) => {{ const r = {DEBUG}.regionsFor(id); return r && ({condition}) }}",
                           arg=node_id, timeout=30_000)
    return show(page, node_id)


def python_boxes(height: int, width: int, tile: int, overlap: int) -> list[dict]:
    return [pixel_box(b) for b in image_grid(height, width, tile, tile, overlap).boxes]


def test_js_grid_is_the_python_grid(page, server):
    """js/grid.js, as the server serves it, against cupscale/tiling/grid.py on a sweep of sizes."""
    rng = random.Random(7)
    cases = [(11, 11, 6, 6, 3), (13, 20, 6, 8, 2), (40, 33, 64, 64, 8)]  # 2.5 stride: Python rounds to even
    cases += [(rng.randint(1, 400), rng.randint(1, 400), rng.randint(1, 160), rng.randint(1, 160), rng.randint(0, 40))
              for _ in range(3000)]
    expected = []
    for case in cases:
        try:
            g = region_grid(*case)
            expected.append([g.rows, g.cols, [[b.top, b.left, b.height, b.width] for b in g.boxes]])
        except ValueError:
            expected.append("error")
    got = page.evaluate("""async ([pack, cases]) => {
        const grid = await import(`/extensions/${pack}/grid.js`)
        return cases.map((c) => {
            try {
                const g = grid.regionGrid(...c)
                return [g.rows, g.cols, g.boxes.map((b) => [b.top, b.left, b.height, b.width])]
            } catch (e) { return 'error' }
        })
    }""", [PACK_DIR.name, cases])
    mismatches = [(c, e, g) for c, e, g in zip(cases, expected, got) if e != g]
    assert not mismatches, mismatches[:3]
    assert expected[0][2][1] == [0, 2, 6, 6]  # round(2.5) == 2: JavaScript's Math.round would say 3
    assert sum(e == "error" for e in expected) > 50 and sum(e != "error" and e[0] * e[1] > 4 for e in expected) > 500


def test_every_listed_template_opens_with_every_node_known(page, server, screenshots):
    """As the Templates browser opens them: the names /workflow_templates lists, each graph fetched from
    /api/workflow_templates/<pack>/<name>.json and loaded."""
    listed = server.get("/workflow_templates")[PACK_DIR.name]
    assert sorted(listed) == sorted(p.stem for p in TEMPLATES.glob("*.json")) and len(listed) >= 8
    for name in sorted(listed):
        ui = page.evaluate("(url) => fetch(url).then((r) => r.json())",
                           f"/api/workflow_templates/{PACK_DIR.name}/{name}.json")
        load_workflow(page, ui)
        show_graph_start(page)
        png = page.screenshot(path=str(screenshots / f"template_{name}.png"))
        keep(png, TEMPLATES / f"{name}.jpg", width=640)
        keep(png, PACK_DIR / "docs" / f"workflow_{name}.png", width=1200)


def test_rarely_changed_widgets_hide_until_show_advanced_and_are_still_saved(page):
    ui = json.loads((TEMPLATES / "caption_regions.json").read_text())
    captioner = load_workflow(page, ui)["MLLMRegionCaptioner"]
    state = page.evaluate(f"""(id) => {{
        const node = {APP}.graph.getNodeById(id)
        const visible = () => node.widgets.filter((w) => node.isWidgetVisible(w)).map((w) => w.name)
        const before = visible()
        node.toggleAdvanced()
        return {{before, after: visible(), saved: node.serialize().widgets_values}}
    }}""", captioner)
    assert "prefix" not in state["before"] and "description_instruction" not in state["before"]
    assert {"tile_width", "region_prompts", "region_prompts_json"} <= set(state["before"])
    assert len(state["before"]) <= 16 and set(state["before"]) < set(state["after"])
    assert {"prefix", "description_instruction"} <= set(state["after"])
    saved = next(n for n in ui["nodes"] if n["type"] == "MLLMRegionCaptioner")["widgets_values"]
    assert state["saved"] == saved


def test_a_captioner_saved_before_the_vlm_loaders_keeps_its_settings_and_says_which_loader_to_add(page):
    """A UI workflow saved before the loaders: the captioner's 27 widget values (backend, local_model,
    endpoint_url, endpoint_model, today's 15, then device ... retries) land in today's widgets in place, and the
    node says which loader to add with which settings."""
    ui = json.loads((TEMPLATES / "caption_regions.json").read_text())
    node = next(n for n in ui["nodes"] if n["type"] == "MLLMRegionCaptioner")
    today = list(node["widgets_values"])
    node["widgets_values"] = ["local model", "Qwen2.5-VL-3B-Instruct", "http://127.0.0.1:11434/v1", "", *today,
                              "auto", "auto", 4, "unload", "", False, 120.0, 2]
    captioner = load_workflow(page, ui)["MLLMRegionCaptioner"]
    state = page.evaluate(f"""(id) => {{
        const node = {APP}.graph.getNodeById(id)
        return {{values: node.serialize().widgets_values, note: node.cupscaleMigrated}}
    }}""", captioner)
    assert state["values"] == today
    assert "add a Local VLM Loader with local_model = Qwen2.5-VL-3B-Instruct and connect" in state["note"]


def test_each_stage_of_the_blended_edit_shows_the_size_it_samples(page):
    """Multi-stage edit of the 72x40 input: stages at 1/2, 3/4 and full size, cut to whole latent cells."""
    load_workflow(page, "edit_multistage_blended.json")
    sizes = {node: shown_when(page, node, "r.width !== null") for node in (13, 34, 41)}
    assert {n: (r["width"], r["height"], r["drawn"]) for n, r in sizes.items()} == \
        {13: (32, 16, 1), 34: (48, 24, 1), 41: (72, 40, 1)}


def test_tiled_diffusion_draws_the_tiles_of_each_stage(page, screenshots):
    """×2.5 workflow: LIIF ×2 then ×1.25 of the 72x40 input; each sampler's latent is cut to whole cells."""
    ids = load_workflow(page, "upscale_x2_5_implicit.json")
    tiled = ids["TiledBlendedDiffusion"]
    set_widgets(page, tiled, tile_width=64, tile_height=64, overlap=16)
    stage1 = shown_when(page, tiled, "r.stages === 2")
    assert (stage1["width"], stage1["height"]) == (144, 80)
    assert stage1["boxes"] == python_boxes(80, 144, 64, 16) and stage1["drawn"] == len(stage1["boxes"]) == 6
    keep(page.screenshot(path=str(screenshots / "tiled_stage1.png"), clip=panel_clip(page, tiled)),
         PACK_DIR / "docs" / "ui_tile_grid.png")

    point = page.evaluate(f"(id) => {DEBUG}.regionScreenPoint(id, 0)", tiled)
    page.mouse.click(point["x"], point["y"])  # a click on the panel steps to the next stage
    stage2 = show(page, tiled)
    assert (stage2["width"], stage2["height"]) == (176, 96)  # 180x100 from LIIF, cut to 22x12 latent cells
    assert stage2["boxes"] == python_boxes(96, 176, 64, 16) and stage2["drawn"] == len(stage2["boxes"]) == 8
    page.screenshot(path=str(screenshots / "tiled_stage2.png"))


def test_region_prompt_edited_in_the_graph_is_valid_json_the_server_uses(page, server, screenshots):
    ids = load_workflow(page, "caption_regions.json")
    captioner = ids["MLLMRegionCaptioner"]
    set_widgets(page, ids["LocalVLMLoader"], local_model="tiny-llava")
    set_widgets(page, captioner, tile_width=64, tile_height=64, overlap=16, max_tokens=4,
                on_region_failure="use global prompt", global_prompt="a lake")
    before = shown_when(page, captioner, "r.width !== null")
    assert (before["width"], before["height"]) == (144, 80)  # the 72x40 input after ImageScaleBy x2
    assert before["boxes"] == python_boxes(80, 144, 64, 16) and before["drawn"] == 6
    page.screenshot(path=str(screenshots / "regions_before_captioning.png"))

    point = page.evaluate(f"(id) => {DEBUG}.regionScreenPoint(id, 4)", captioner)
    page.mouse.click(point["x"], point["y"])
    assert "Not captioned yet" in page.locator(".cupscale-editor").inner_text()
    page.click(".cupscale-editor [data-action=cancel]")

    page.evaluate(f"() => {APP}.queuePrompt(0)")
    page.wait_for_function(f"(id) => {APP}.graph.getNodeById(id).cupscaleResult", arg=captioner, timeout=120_000)
    captioned = from_json(page.evaluate(f"(id) => {APP}.graph.getNodeById(id).cupscaleResult.region_prompts_json",
                                        captioner))
    show(page, captioner)
    page.mouse.click(point["x"], point["y"])
    editor = page.locator(".cupscale-editor")
    assert editor.get_attribute("data-region") == "4"
    assert editor.locator("textarea").input_value() == captioned.prompts[4]
    box = editor.bounding_box()  # the editor sits in the middle of the window: move the panel below it
    page.evaluate(f"""([id, below]) => new Promise((resolve) => {{
        const app = {APP}
        const node = app.graph.getNodeById(id)
        const {{ ds }} = app.canvas
        const panelTop = (node.pos[1] + node.size[1] - 250 + ds.offset[1]) * ds.scale
        ds.offset[1] += (below - panelTop) / ds.scale
        app.graph.setDirtyCanvas(true, true)
        requestAnimationFrame(() => requestAnimationFrame(resolve))
    }})""", [captioner, box["y"] + box["height"] + 10])
    panel = panel_clip(page, captioner)
    top = min(box["y"], panel["y"] + panel["height"] - 300) - 20
    clip = {"x": min(box["x"], panel["x"]) - 20, "y": top}
    clip.update(width=max(box["x"] + box["width"], panel["x"] + panel["width"]) + 20 - clip["x"],
                height=max(box["y"] + box["height"], panel["y"] + panel["height"]) + 20 - top)
    keep(page.screenshot(path=str(screenshots / "region_editor.png"), clip=clip),
         PACK_DIR / "docs" / "ui_region_editor.png")
    editor.locator("textarea").fill("a red boat on the lake")
    page.click(".cupscale-editor [data-action=save]")
    assert page.locator(".cupscale-editor").count() == 0

    edited = from_json(page.evaluate(f"""(id) => {APP}.graph.getNodeById(id).widgets
        .find((w) => w.name === 'region_prompts_json').value""", captioner))
    assert edited.prompts[4] == "a red boat on the lake"
    assert edited.prompts[:4] + edited.prompts[5:] == captioned.prompts[:4] + captioned.prompts[5:]
    assert edited.grid == captioned.grid == image_grid(80, 144, 64, 64, 16)

    page.evaluate(f"(id) => {{ {APP}.graph.getNodeById(id).cupscaleResult = null; {APP}.queuePrompt(0) }}", captioner)
    page.wait_for_function(f"(id) => {APP}.graph.getNodeById(id).cupscaleResult", arg=captioner, timeout=120_000)
    rerun = page.evaluate(f"(id) => {APP}.graph.getNodeById(id).cupscaleResult.region_prompts_json", captioner)
    assert from_json(rerun) == edited  # the server took the edited JSON instead of captioning again
    show(page, captioner)
    page.screenshot(path=str(screenshots / "region_prompts_after_edit.png"))

    set_widgets(page, captioner, tile_width=72)  # the prompts no longer fit the regions: the editor says why
    narrower = [pixel_box(b) for b in image_grid(80, 144, 64, 72, 16).boxes]
    assert show(page, captioner)["boxes"] == narrower != python_boxes(80, 144, 64, 16)
    page.mouse.click(point["x"], point["y"])
    assert "region_prompts_json was made for a 144×80 px image with 64×64 px tiles (overlap 16)" in \
        page.locator(".cupscale-editor").inner_text()
    page.click(".cupscale-editor [data-action=cancel]")
