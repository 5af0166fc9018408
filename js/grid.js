// The region grid of cupscale/tiling/grid.py, ported line for line so that the overlay in the graph shows
// exactly the tiles TiledBlendedDiffusion runs and the regions MLLMRegionCaptioner captions.
// tests/test_browser.py checks this file against the Python on many sizes. Pure functions: no
// ComfyUI import, so it also runs outside the page.

export const PIXELS_PER_CELL = 8 // cupscale/captioning/region_prompts.py PIXELS_PER_CELL

/** Python's round(): halves go to the even neighbour (JavaScript's Math.round sends them up). */
export function roundHalfEven(x) {
  const floor = Math.floor(x)
  const diff = x - floor
  if (diff > 0.5) return floor + 1
  if (diff < 0.5) return floor
  return floor % 2 === 0 ? floor : floor + 1
}

export const PATCH_CELLS = 2 // grid.py PATCH_CELLS: latent cells per patch of the DiT models

/** grid.py tile_starts: equal tiles spread evenly over `length`, sharing at least `overlap`; starts on whole
 * patches when tile and overlap are whole patches, unless that would shrink an overlap. */
export function tileStarts(length, tile, overlap) {
  if (tile >= length) return [0]
  const count = Math.ceil((length - overlap) / (tile - overlap))
  const stride = (length - tile) / (count - 1)
  const plain = Array.from({ length: count }, (_, i) => roundHalfEven(i * stride))
  if (tile % PATCH_CELLS || overlap % PATCH_CELLS) return plain
  const aligned = Array.from({ length: count - 1 }, (_, i) => roundHalfEven(i * stride / PATCH_CELLS) * PATCH_CELLS)
  aligned.push(length - tile)
  const shrinks = aligned.slice(1).some((b, i) => b - aligned[i] > tile - overlap || b <= aligned[i])
  return shrinks ? plain : aligned
}

/** grid.py region_grid, in latent cells; boxes row-major as {top, left, height, width}. */
export function regionGrid(height, width, tileHeight, tileWidth, overlap) {
  if (Math.min(height, width, tileHeight, tileWidth) < 1) {
    throw new Error(`latent ${height}x${width} and tile ${tileHeight}x${tileWidth} must be positive`)
  }
  if (overlap < 0 || overlap >= Math.min(tileHeight, tileWidth)) {
    throw new Error(`overlap ${overlap} must be at least 0 and smaller than the tile ${tileHeight}x${tileWidth}`)
  }
  const th = Math.min(tileHeight, height)
  const tw = Math.min(tileWidth, width)
  const ys = tileStarts(height, th, Math.min(overlap, th - 1))
  const xs = tileStarts(width, tw, Math.min(overlap, tw - 1))
  const boxes = ys.flatMap((top) => xs.map((left) => ({ top, left, height: th, width: tw })))
  return { height, width, tileHeight: th, tileWidth: tw, overlap, rows: ys.length, cols: xs.length, boxes }
}

/** captioning.py image_grid: the grid of an image, from sizes in pixels (multiples of 8). */
export function imageGrid(heightPx, widthPx, tileHeightPx, tileWidthPx, overlapPx) {
  const c = PIXELS_PER_CELL
  if (heightPx < c || widthPx < c) {
    throw new Error(`image is ${widthPx}x${heightPx} pixels: regions need at least ${c}x${c} (one latent cell)`)
  }
  const cells = (px) => Math.floor(px / c)
  return regionGrid(cells(heightPx), cells(widthPx), cells(tileHeightPx), cells(tileWidthPx), cells(overlapPx))
}

/** region_prompts.py pixel_box: a box in image pixels, as the region prompts JSON writes it. */
export function pixelBox(box) {
  const c = PIXELS_PER_CELL
  return { x: box.left * c, y: box.top * c, width: box.width * c, height: box.height * c }
}
