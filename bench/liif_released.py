"""LIIF's released EDSR-baseline-LIIF on real photographs: PSNR against bicubic at x2, x2.5, x3, x4.

Each photo (scikit-image's bundled ones) is cropped to a multiple of 60 pixels, so that every scale
divides it, and downscaled with PIL's bicubic filter (as LIIF's training pairs were made). The low-res
image is then upscaled back by bicubic and by the ImplicitUpscale node with the released checkpoint,
loaded through ImplicitUpscaleModelLoader on an in-process ComfyUI. PSNR is over RGB in [0, 1] of the
8-bit outputs, a border of ceil(scale) pixels left out (as LIIF's evaluation shaves it). Side-by-side
crops (bicubic | LIIF | original) go to docs/.

    .venv/bin/python bench/liif_released.py                 # 4 photos x 4 scales, about 5 minutes on 2 cores
    .venv/bin/python bench/liif_released.py --images chelsea --scales 4 --no-figures
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cupscale.images import from_uint8, to_uint8  # noqa: E402
from harness.photos import PHOTOS, photo, psnr  # noqa: E402

SCALES = (2.0, 2.5, 3.0, 4.0)
FIGURE_SCALES = (2.5, 4.0)


class ReleasedLIIF:
    """The released checkpoint behind the pack's own nodes, on a booted host."""

    def __init__(self):
        from harness import comfy_host
        from harness.released_weights import released_liif
        comfy_host.boot()
        import folder_paths
        import nodes
        path = released_liif()
        folder_paths.add_model_folder_path("liif", str(path.parent))
        self.nodes = nodes.NODE_CLASS_MAPPINGS
        self.model = self.nodes["ImplicitUpscaleModelLoader"].execute(path.name)[0]

    def upscale(self, low: Image.Image, size: tuple[int, int]) -> Image.Image:
        out = self.nodes["ImplicitUpscale"].execute(self.model, from_uint8(np.asarray(low)), 1.0, *size, 192)[0]
        return Image.fromarray(to_uint8(out)[0])


def side_by_side(images: list[Image.Image], labels: list[str], box: tuple[int, int, int, int],
                 zoom: int = 2) -> Image.Image:
    """The same crop of each image, enlarged ``zoom`` times without smoothing, labelled above."""
    crops = [im.crop(box).resize(((box[2] - box[0]) * zoom, (box[3] - box[1]) * zoom), Image.NEAREST)
             for im in images]
    w, h = crops[0].size
    sheet = Image.new("RGB", (len(crops) * (w + 4) - 4, h + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (crop, label) in enumerate(zip(crops, labels)):
        sheet.paste(crop, (i * (w + 4), 18))
        draw.text((i * (w + 4) + 4, 3), label, fill="black")
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    parser.add_argument("--scales", nargs="+", type=float, default=list(SCALES))
    parser.add_argument("--no-figures", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    liif = ReleasedLIIF()
    rows = []
    for name in args.images:
        original = photo(name)
        for scale in args.scales:
            low = original.resize((round(original.width / scale), round(original.height / scale)), Image.BICUBIC)
            bicubic = low.resize(original.size, Image.BICUBIC)
            implicit = liif.upscale(low, original.size)
            shave = math.ceil(scale)
            truth = np.asarray(original)
            rows.append((name, scale, low.size, original.size, psnr(np.asarray(bicubic), truth, shave),
                         psnr(np.asarray(implicit), truth, shave)))
            print(f"{name} x{scale:g}: bicubic {rows[-1][4]:.2f} dB, LIIF {rows[-1][5]:.2f} dB", file=sys.stderr)
            if not args.no_figures and scale in FIGURE_SCALES:
                cx, cy = original.width // 2, original.height // 2
                box = (cx - 64, cy - 64, cx + 64, cy + 64)
                sheet = side_by_side([bicubic, implicit, original],
                                     [f"bicubic x{scale:g}", f"LIIF x{scale:g}", "original"], box)
                sheet.save(ROOT / "docs" / f"liif_{name}_x{scale:g}.png", optimize=True)

    print("LIIF (released EDSR-baseline-LIIF) against bicubic, from bicubic-downscaled photos; PSNR in dB, RGB")
    print("| photo | scale | input | output | bicubic | LIIF | gain |")
    print("|---|---|---|---|---|---|---|")
    for name, scale, (lw, lh), (w, h), bic, imp in rows:
        print(f"| {name} | x{scale:g} | {lw}x{lh} | {w}x{h} | {bic:.2f} | {imp:.2f} | +{imp - bic:.2f} |")
    gains = [imp - bic for *_, bic, imp in rows]
    print(f"mean gain over bicubic: +{sum(gains) / len(gains):.2f} dB over {len(rows)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
