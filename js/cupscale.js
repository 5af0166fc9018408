// comfyui-cupscale in the graph: the region grid drawn on MLLMRegionCaptioner and
// TiledBlendedDiffusion, and an editor for each region's prompt.
//
// Both nodes get a "regions" panel (a widget that is never saved or sent) showing their image with
// the grid of js/grid.js, the exact port of cupscale/tiling/grid.py. The image and its size are found by
// following the links upstream (sizes.js); the captioner prefers the preview its last run sent
// (ui.cupscale_regions). TiledBlendedDiffusion has no image of its own: its panel follows its MODEL
// to the samplers it drives, and each sampler's latent back to an image, one stage per sampler
// (click the panel to step through the stages). Clicking a region of the captioner opens an editor
// that writes the edited prompt into the node's region_prompts_json widget as valid JSON.
import { app } from '../../scripts/app.js'
import { api } from '../../scripts/api.js'
import { PIXELS_PER_CELL, imageGrid, pixelBox, regionGrid } from './grid.js'
import { samplingStages, sizeAt, widgetNumber } from './sizes.js'

const CAPTIONER = 'MLLMRegionCaptioner'
const TILED = 'TiledBlendedDiffusion'
const PANEL = 'cupscale_regions'
const JSON_WIDGET = 'region_prompts_json'
const JSON_FORMAT = 'cupscale.region_prompts/1' // cupscale/captioning/region_prompts.py JSON_FORMAT
const PANEL_HEIGHT = 220 // fixed, so a node's size (and a workflow's layout) does not depend on its image
const LABEL_HEIGHT = 20
const MARGIN = 10

const widgetValue = (node, name) => node.widgets?.find((w) => w.name === name)?.value

/** The tile settings of a node, in pixels; null for a setting driven by a link. */
function tileSettings(node) {
  return {
    tileWidth: widgetNumber(node, 'tile_width'),
    tileHeight: widgetNumber(node, 'tile_height'),
    overlap: widgetNumber(node, 'overlap')
  }
}

/**
 * The captioner's region prompts: the widget's JSON when set, else the last run's; with the grid
 * they were made for. Checked as cupscale/captioning/region_prompts.py from_json checks them, so that the
 * editor never writes JSON the node would refuse.
 */
function regionDocument(node) {
  const text = (widgetValue(node, JSON_WIDGET) ?? '').trim() || node.cupscaleResult?.region_prompts_json || ''
  if (node.cupscaleParsed?.text !== text) node.cupscaleParsed = { text, ...parseRegionDocument(text) }
  return node.cupscaleParsed
}

function parseRegionDocument(text) {
  if (!text) return { doc: null, grid: null, error: null }
  try {
    const doc = JSON.parse(text)
    if (doc?.format !== JSON_FORMAT) throw new Error(`it needs "format": "${JSON_FORMAT}"`)
    const g = doc.grid_in_latent_cells ?? {}
    const grid = regionGrid(g.height, g.width, g.tile_height, g.tile_width, g.overlap)
    if (!Array.isArray(doc.regions) || doc.regions.length !== grid.boxes.length) {
      throw new Error(`its grid has ${grid.boxes.length} regions but it lists ${doc.regions?.length ?? 0}`)
    }
    return { doc, grid, error: null }
  } catch (e) {
    return { doc: null, grid: null, error: `${JSON_WIDGET} is not region prompts JSON (${e.message}).` }
  }
}

const sameBoxes = (a, b) => JSON.stringify(a.boxes) === JSON.stringify(b.boxes)

/** What the panel of a captioner shows: the image size, the picture and the grid. */
function captionerView(node) {
  const result = node.cupscaleResult
  let size = sizeAt(node, 'image')
  if (result && (!size || (size.width === result.width && size.height === result.height))) {
    size = { width: result.width, height: result.height, picture: node.cupscalePreview ?? size?.picture }
  }
  const { doc } = regionDocument(node)
  if (!size && doc) {
    const g = doc.grid_in_latent_cells
    size = { width: g.width * PIXELS_PER_CELL, height: g.height * PIXELS_PER_CELL, picture: null }
  }
  if (!size) return { message: 'regions: connect an image, or run once' }
  return view(node, size, 'image')
}

/** What the panel of TiledBlendedDiffusion shows: one sampling stage at a time. */
function tiledView(node) {
  const stages = samplingStages(node)
  if (!stages.length) return { message: 'tiles: connect to a sampler whose latent comes from an image' }
  const index = (node.cupscaleStage ?? 0) % stages.length
  const label = stages.length > 1 ? `stage ${index + 1}/${stages.length}` : 'sampled'
  return { ...view(node, stages[index], label), stages: stages.length }
}

function view(node, size, label) {
  const s = tileSettings(node)
  if (Object.values(s).includes(null)) return { message: `${label}: the tile size comes from a link, known when it runs` }
  try {
    const grid = imageGrid(size.height, size.width, s.tileHeight, s.tileWidth, s.overlap)
    const noun = node.type === CAPTIONER ? 'regions' : 'tiles'
    const text = `${label}: ${size.width}×${size.height} px, ${grid.boxes.length} ${noun} (${grid.cols}×${grid.rows})`
    return { size, grid, text }
  } catch (e) {
    return { message: `${label}: ${e.message}` }
  }
}

function currentView(node) {
  return node.type === CAPTIONER ? captionerView(node) : tiledView(node)
}

/** Where the image and each region land inside the panel, in node coordinates. */
function layout(widgetY, width, v) {
  const areaW = width - 2 * MARGIN
  const areaH = PANEL_HEIGHT - LABEL_HEIGHT - 8
  const scale = Math.min(areaW / v.size.width, areaH / v.size.height)
  const w = v.size.width * scale
  const h = v.size.height * scale
  const x0 = MARGIN + (areaW - w) / 2
  const y0 = widgetY + 4
  const rects = v.grid.boxes.map((box) => {
    const p = pixelBox(box)
    return { x: x0 + p.x * scale, y: y0 + p.y * scale, w: p.width * scale, h: p.height * scale }
  })
  return { image: { x: x0, y: y0, w, h }, rects, labelY: y0 + areaH + 4 }
}

function regionColour(i, alpha) {
  return `hsla(${(i * 137.508) % 360}, 85%, 60%, ${alpha})`
}

function drawPanel(ctx, node, width, y) {
  const v = currentView(node)
  node.cupscaleDrawn = { rects: [] }
  ctx.save()
  ctx.font = '12px sans-serif'
  ctx.textAlign = 'left'
  ctx.fillStyle = v.size ? '#ddd' : '#999'
  if (!v.size) {
    ctx.fillText(v.message, MARGIN, y + PANEL_HEIGHT / 2)
    ctx.restore()
    return
  }
  const l = layout(y, width, v)
  ctx.fillStyle = '#111'
  ctx.fillRect(l.image.x, l.image.y, l.image.w, l.image.h)
  const picture = v.size.picture
  if (picture?.complete && picture.naturalWidth) ctx.drawImage(picture, l.image.x, l.image.y, l.image.w, l.image.h)
  const edited = node.cupscaleEditing
  l.rects.forEach((r, i) => {
    ctx.fillStyle = regionColour(i, i === edited ? 0.35 : 0.08)
    ctx.fillRect(r.x, r.y, r.w, r.h)
    ctx.strokeStyle = regionColour(i, 0.95)
    ctx.lineWidth = i === edited ? 3 : 1.5
    ctx.strokeRect(r.x + 1, r.y + 1, r.w - 2, r.h - 2)
    ctx.fillStyle = regionColour(i, 1)
    ctx.fillText(String(i), r.x + 4, r.y + 14)
  })
  node.cupscaleDrawn.rects = l.rects
  ctx.fillStyle = '#ddd'
  const hint = node.type === CAPTIONER ? ' · click a region to edit' : v.stages > 1 ? ' · click: next stage' : ''
  ctx.fillText(v.text + hint, MARGIN, l.labelY + 12)
  ctx.restore()
}

/** The region under a point of the panel (node coordinates): the one whose centre is nearest. */
function regionAt(node, x, y) {
  const rects = node.cupscaleDrawn?.rects ?? []
  let best = -1
  let bestDistance = Infinity
  rects.forEach((r, i) => {
    if (x < r.x || x > r.x + r.w || y < r.y || y > r.y + r.h) return
    const d = (x - r.x - r.w / 2) ** 2 + (y - r.y - r.h / 2) ** 2
    if (d < bestDistance) [best, bestDistance] = [i, d]
  })
  return best
}

function addPanel(node) {
  const panel = {
    name: PANEL,
    type: PANEL,
    value: '',
    serialize: false, // not in widgets_values...
    options: { serialize: false }, // ...nor in the prompt
    computeSize: (width) => [width ?? node.size[0], PANEL_HEIGHT],
    draw: (ctx, n, width, y) => drawPanel(ctx, n, width, y),
    onPointerDown(pointer, n) {
      pointer.onClick = (e) => {
        if (n.type === TILED) {
          n.cupscaleStage = (n.cupscaleStage ?? 0) + 1
        } else {
          const index = regionAt(n, e.canvasX - n.pos[0], e.canvasY - n.pos[1])
          if (index >= 0) openEditor(n, index)
        }
        n.setDirtyCanvas(true, true)
      }
      return true
    }
  }
  node.addCustomWidget(panel)
  const [w, h] = node.computeSize()
  node.setSize([Math.max(node.size[0], w), Math.max(node.size[1], h)])
}

// ---- the editor ---------------------------------------------------------------------------------

function closeEditor() {
  const open = document.querySelector('.cupscale-editor')
  if (!open) return
  const node = app.graph.getNodeById(Number(open.dataset.node))
  if (node) {
    node.cupscaleEditing = undefined
    node.setDirtyCanvas(true, true)
  }
  open.remove()
}

function element(tag, style, text) {
  const el = document.createElement(tag)
  Object.assign(el.style, style)
  if (text !== undefined) el.textContent = text
  return el
}

/** Why the region's prompt cannot be edited now, or null when it can. */
function editBlocker(node, v, { doc, grid, error }) {
  if (error) return `${error} Fix or clear it to caption again.`
  const slot = node.inputs?.find((i) => i.name === JSON_WIDGET)
  if (slot?.link != null) return `${JSON_WIDGET} comes from a link: edit the text at its source.`
  if (!doc) return 'Not captioned yet: run the workflow once to caption the regions, then edit them here.'
  if (!sameBoxes(grid, v.grid)) {
    const g = doc.grid_in_latent_cells
    const [w, h, tw, th, o] = [g.width, g.height, g.tile_width, g.tile_height, g.overlap]
      .map((cells) => cells * PIXELS_PER_CELL)
    return (`${JSON_WIDGET} was made for a ${w}×${h} px image with ${tw}×${th} px tiles (overlap ${o}), not ` +
      `for these regions. Set the tile size and overlap back, or clear ${JSON_WIDGET} to caption again.`)
  }
  return null
}

function openEditor(node, index) {
  closeEditor()
  const v = captionerView(node)
  if (!v.grid || index < 0 || index >= v.grid.boxes.length) return
  const prompts = regionDocument(node)
  const doc = prompts.doc && structuredClone(prompts.doc) // edited here, written back only on Save
  const blocker = editBlocker(node, v, prompts)
  const box = pixelBox(v.grid.boxes[index])
  const row = Math.floor(index / v.grid.cols)
  const col = index % v.grid.cols

  const dialog = element('div', {
    position: 'fixed', inset: 'auto', margin: '0', left: '50%', top: '50%', transform: 'translate(-50%, -50%)',
    width: '520px', padding: '14px', background: '#222', color: '#ddd', border: '1px solid #666',
    borderRadius: '8px', boxShadow: '0 8px 30px rgba(0,0,0,0.6)', fontFamily: 'sans-serif', fontSize: '13px'
  })
  dialog.className = 'cupscale-editor'
  dialog.popover = 'manual' // drawn in the top layer, above the canvas, and closed only by its buttons
  dialog.dataset.node = String(node.id)
  dialog.dataset.region = String(index)
  dialog.append(element('div', { fontWeight: 'bold', marginBottom: '6px' },
    `Region ${index} (row ${row}, column ${col}): x ${box.x}, y ${box.y}, ${box.width}×${box.height} px`))

  const buttons = element('div', { display: 'flex', justifyContent: 'flex-end', gap: '8px', marginTop: '8px' })
  const button = (label, action) => {
    const b = element('button', { padding: '4px 14px' }, label)
    b.dataset.action = action
    buttons.append(b)
    return b
  }
  if (blocker) {
    dialog.append(element('div', { color: '#f99', whiteSpace: 'pre-wrap' }, blocker))
    button('Close', 'cancel').onclick = closeEditor
  } else {
    const textarea = element('textarea', { width: '100%', height: '120px', boxSizing: 'border-box',
      background: '#111', color: '#eee', border: '1px solid #555', fontSize: '13px' })
    textarea.value = doc.regions[index].prompt
    dialog.append(textarea)
    const save = () => {
      doc.regions[index].prompt = textarea.value
      const widget = node.widgets.find((w) => w.name === JSON_WIDGET)
      widget.value = JSON.stringify(doc, null, 2)
      widget.callback?.(widget.value)
      node.graph?.change?.()
      closeEditor()
    }
    textarea.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) save()
      if (e.key === 'Escape') closeEditor()
      e.stopPropagation() // keep the canvas' shortcuts out of the text
    })
    button('Cancel', 'cancel').onclick = closeEditor
    button('Save', 'save').onclick = save
    setTimeout(() => textarea.focus(), 0)
  }
  dialog.append(buttons)
  // Kept beside the graph's canvas, not in the shared document.body; the popover's top layer lifts it
  // out of whatever clips or transforms that container.
  app.canvas.canvas.parentElement.append(dialog)
  dialog.showPopover()
  node.cupscaleEditing = index
  node.setDirtyCanvas(true, true)
}

// ---- registration -------------------------------------------------------------------------------

function onCaptioned(node, message) {
  const result = message?.cupscale_regions?.[0]
  if (!result) return
  node.cupscaleResult = result
  const picture = new Image()
  picture.onload = () => node.setDirtyCanvas(true, true)
  const { filename, subfolder, type } = result.image
  const query = new URLSearchParams({ filename, subfolder, type })
  picture.src = api.apiURL(`/view?${query}`)
  node.cupscalePreview = picture
}

/**
 * Debug and test hooks: what the panel of a node holds and where its regions are on the screen. Kept on
 * the extension object (app.extensions, name 'cupscale.regions'), not on window: the page is shared.
 */
const debug = {
  grid: { imageGrid, regionGrid, pixelBox },
  regionsFor(nodeId) {
    const node = app.graph.getNodeById(nodeId)
    if (!node) return null
    const v = currentView(node)
    return {
      width: v.size?.width ?? null,
      height: v.size?.height ?? null,
      message: v.message ?? null,
      boxes: v.grid ? v.grid.boxes.map(pixelBox) : [],
      drawn: node.cupscaleDrawn?.rects.length ?? 0,
      stages: v.stages ?? (v.size ? 1 : 0)
    }
  },
  regionScreenPoint(nodeId, index) {
    const node = app.graph.getNodeById(nodeId)
    const r = node?.cupscaleDrawn?.rects[index]
    if (!r) return null
    const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + r.x + r.w / 2, node.pos[1] + r.y + r.h / 2])
    const bounds = app.canvas.canvas.getBoundingClientRect()
    return { x: bounds.left + cx, y: bounds.top + cy }
  }
}

// A captioner saved before the VLM loaders holds its model settings among its widget values: backend,
// local_model, endpoint_url, endpoint_model before today's values and eight loader settings (device ... retries)
// after them. The frontend has put them in the wrong widgets by position; today's values go back in place, and
// the user is told which loader to add with which settings (the run also stops saying "vlm: not connected").
const OLD_BACKENDS = ['local model', 'endpoint']
const OLD_BEFORE = 4
const OLD_AFTER = 8

function migrateCaptioner(node, info) {
  const saved = info?.widgets_values
  const widgets = (node.widgets ?? []).filter((w) => w.serialize !== false)
  if (!Array.isArray(saved) || !OLD_BACKENDS.includes(saved[0])
      || saved.length !== widgets.length + OLD_BEFORE + OLD_AFTER) return
  saved.slice(OLD_BEFORE, OLD_BEFORE + widgets.length).forEach((value, i) => { widgets[i].value = value })
  const loader = saved[0] === OLD_BACKENDS[0]
    ? `a Local VLM Loader with local_model = ${saved[1]}`
    : `an Endpoint VLM Loader with endpoint_url = ${saved[2]} and endpoint_model = ${saved[3]}`
  node.cupscaleMigrated = `This captioner was saved before the VLM loaders: add ${loader} and connect its vlm output to the captioner's vlm input.`
  console.warn(`[cupscale] node ${node.id}: ${node.cupscaleMigrated}`)
  app.extensionManager?.toast?.add?.({ severity: 'warn', summary: 'MLLM Region Captioner', detail: node.cupscaleMigrated, life: 15000 })
}

app.registerExtension({
  name: 'cupscale.regions',
  debug,
  async setup() {
    debug.ready = true // the frontend calls setup once every node type is registered
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== CAPTIONER && nodeData.name !== TILED) return
    const onNodeCreated = nodeType.prototype.onNodeCreated
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments)
      addPanel(this)
      return r
    }
    if (nodeData.name === CAPTIONER) {
      const onExecuted = nodeType.prototype.onExecuted
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments)
        onCaptioned(this, message)
      }
      const onConfigure = nodeType.prototype.onConfigure
      nodeType.prototype.onConfigure = function (info) {
        const r = onConfigure?.apply(this, arguments)
        migrateCaptioner(this, info)
        return r
      }
    }
  }
})

// Widgets the pack declares `advanced` (rarely changed: instructions, device, endpoint retries, ...) stay
// hidden until "Show Advanced" in the node's menu. This frontend copies the flag into widget.options but
// only hides widgets whose own `advanced` is set; they are saved and sent as before.
app.registerExtension({
  name: 'cupscale.advanced',
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.category ?? '').startsWith('cupscale')) return
    const onNodeCreated = nodeType.prototype.onNodeCreated
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments)
      const marked = (this.widgets ?? []).filter((w) => w.options?.advanced)
      for (const w of marked) w.advanced = true
      if (marked.length) this.setSize([this.size[0], this.computeSize()[1]])
      return r
    }
  }
})
