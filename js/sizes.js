// The size of the image that reaches an input, worked out in the graph before anything runs, so the
// region panels of cupscale.js can show the grid of the image a node will really get (a ×2 stage
// after a ×1.25 stage, say). Sizes follow the host's own arithmetic for the nodes listed in RULES;
// through any other node the size is unknown and the panel says so. Sizes are in image pixels; a
// latent counts as the image it was encoded from, cut to whole latent cells as VAE Encode cuts it.
import { api } from '../../scripts/api.js'
import { app } from '../../scripts/app.js'
import { PIXELS_PER_CELL, roundHalfEven } from './grid.js'

const pictures = new Map() // /view URL -> HTMLImageElement, loaded once

/** The node and output slot feeding input `name` of `node`, or null when it is not linked. */
function origin(node, name) {
  const slot = node.inputs?.findIndex((i) => i.name === name) ?? -1
  const link = slot >= 0 ? node.getInputLink(slot) : null
  return link ? node.graph?.getNodeById(link.origin_id) ?? null : null
}

/** A widget's number, or null when it is driven by a link (its value is then only known at run time). */
export function widgetNumber(node, name) {
  if (node.inputs?.some((i) => i.name === name && i.link != null)) return null
  const value = node.widgets?.find((w) => w.name === name)?.value
  return typeof value === 'number' ? value : null
}

/** A file of ComfyUI's input folder (or "name [output]"), as LoadImage's widget names it. */
function filePicture(value) {
  if (typeof value !== 'string' || !value) return null
  const annotated = value.match(/^(.*) \[(input|output|temp)\]$/)
  const path = annotated ? annotated[1] : value
  const cut = path.lastIndexOf('/')
  const query = new URLSearchParams({
    filename: path.slice(cut + 1), subfolder: cut >= 0 ? path.slice(0, cut) : '', type: annotated?.[2] ?? 'input'
  })
  const url = api.apiURL(`/view?${query}`)
  if (!pictures.has(url)) {
    const picture = new Image()
    picture.onload = () => app.graph?.setDirtyCanvas(true, true)
    picture.src = url
    pictures.set(url, picture)
  }
  return pictures.get(url)
}

const known = (...values) => values.every((v) => v !== null && v !== undefined)
const through = (input) => (node) => sizeAt(node, input)
const sized = (size, width, height) => ({ width: Math.max(1, width), height: Math.max(1, height), picture: size.picture })

/** ComfyUI's ImageScaleBy and LIIF's scale_by: round(side × factor), Python's rounding. */
function scaledBy(size, factor) {
  if (!size || !known(factor)) return null
  return sized(size, roundHalfEven(size.width * factor), roundHalfEven(size.height * factor))
}

/** ComfyUI's ImageScale (and LIIF's width/height): a side of 0 keeps the aspect ratio. */
function exact(size, width, height) {
  if (!size || !known(width, height)) return null
  if (width && height) return sized(size, width, height)
  if (width) return sized(size, width, roundHalfEven((size.height * width) / size.width))
  if (height) return sized(size, roundHalfEven((size.width * height) / size.height), height)
  return size
}

/** VAE Encode keeps whole latent cells: the pixels beyond a multiple of 8 are cut off. */
function encoded(size) {
  if (!size) return null
  const cut = (v) => Math.floor(v / PIXELS_PER_CELL) * PIXELS_PER_CELL
  return sized(size, cut(size.width), cut(size.height))
}

const RULES = {
  LoadImage(node) {
    const picture = filePicture(node.widgets?.find((w) => w.name === 'image')?.value)
    return picture?.complete && picture.naturalWidth
      ? { width: picture.naturalWidth, height: picture.naturalHeight, picture }
      : null
  },
  EmptyLatentImage(node) {
    const [width, height] = [widgetNumber(node, 'width'), widgetNumber(node, 'height')]
    return known(width, height) ? { width, height, picture: null } : null
  },
  ImageScaleBy: (node) => scaledBy(sizeAt(node, 'image'), widgetNumber(node, 'scale_by')),
  ImageScale: (node) => exact(sizeAt(node, 'image'), widgetNumber(node, 'width'), widgetNumber(node, 'height')),
  ImplicitUpscale(node) {
    const size = sizeAt(node, 'image')
    const [width, height] = [widgetNumber(node, 'width'), widgetNumber(node, 'height')]
    if (!known(width, height)) return null
    return width || height ? exact(size, width, height) : scaledBy(size, widgetNumber(node, 'scale_by'))
  },
  ImageCompositeMasked: through('destination'),
  CLIPRerank: through('images'),
  ImageFromBatch: through('image'),
  RepeatImageBatch: through('image'),
  VAEEncode: (node) => encoded(sizeAt(node, 'pixels')),
  VAEEncodeTiled: (node) => encoded(sizeAt(node, 'pixels')),
  VAEEncodeForInpaint: (node) => encoded(sizeAt(node, 'pixels')),
  SetLatentNoiseMask: through('samples'),
  RepeatLatentBatch: through('samples'),
  VAEDecode: through('samples'),
  VAEDecodeTiled: through('samples'),
  KSampler: through('latent_image'),
  KSamplerAdvanced: through('latent_image'),
  SamplerCustom: through('latent_image'),
  SamplerCustomAdvanced: through('latent_image')
}

/** The size (and the nearest picture upstream) of what reaches input `name` of `node`, or null. */
export function sizeAt(node, name) {
  const source = origin(node, name)
  const rule = source && RULES[source.type]
  return rule ? rule(source) : null
}

/**
 * The sizes TiledBlendedDiffusion will sample at: its MODEL is followed through model patches and
 * guiders to every node that takes a latent_image (a sampler), and each sampler's latent back to its
 * image. Smallest first, which is the order of the stages of an upscale.
 */
export function samplingStages(node) {
  const samplers = new Set()
  const seen = new Set()
  const visit = (n) => {
    if (seen.has(n.id)) return
    seen.add(n.id)
    ;(n.outputs ?? []).forEach((out, slot) => {
      if (out.type !== 'MODEL' && out.type !== 'GUIDER') return
      for (const target of n.getOutputNodes(slot) ?? []) {
        if (target.inputs?.some((i) => i.name === 'latent_image')) samplers.add(target)
        else visit(target)
      }
    })
  }
  visit(node)
  const stages = new Map()
  for (const sampler of samplers) {
    const size = sizeAt(sampler, 'latent_image')
    if (size) stages.set(`${size.width}x${size.height}`, size)
  }
  return [...stages.values()].sort((a, b) => a.width * a.height - b.width * b.height)
}
