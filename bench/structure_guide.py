"""LowFreqStructureGuide: how much global structure it keeps, and what it costs per step.

1. Low-frequency error ||LP(out) - LP(z_L)|| / ||LP(z_L)|| of tiled img2img upscales (tiny SD1.5, x2.5,
   2x2 tiles) against the reference, without and with the guide, in both bands.
2. The guide's cost per step (one post-CFG call) against one model evaluation (the CFG batch of 2).

Run: .venv/bin/python bench/structure_guide.py   (one CPU thread, for stable timings on a shared machine)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)

from harness import comfy_host  # noqa: E402

comfy_host.boot()

import comfy.sample  # noqa: E402
import nodes  # noqa: E402
from cupscale.priors.structure import lowfreq_error, reference_at, working_band  # noqa: E402
from harness import tiny_models  # noqa: E402

REF, WORK, STEPS = 16, 40, 8
BANDS = {"gaussian": 1.0, "fft": 0.5}  # in reference-latent units, the node's defaults


def node(name):
    return nodes.NODE_CLASS_MAPPINGS[name]()


def guide(model, reference, kind, strength=1.0):
    return node("LowFreqStructureGuide").execute(model, {"samples": reference}, strength, kind, BANDS["gaussian"],
                                                 BANDS["fft"], 0.0, 1.0, "constant")[0]


def structured_reference(seed: int) -> torch.Tensor:
    """A low-res latent with a layout (coarse blobs) and texture, at SD latent scale (std about 5)."""
    g = torch.Generator().manual_seed(seed)
    layout = torch.nn.functional.interpolate(torch.randn(1, 4, 4, 4, generator=g), size=(REF, REF), mode="bicubic")
    return 5 * (layout + 0.3 * torch.randn(1, 4, REF, REF, generator=g))


def upscale(model, reference, denoise, seed):
    latent = torch.nn.functional.interpolate(reference, size=(WORK, WORK), mode="bicubic")
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, STEPS, 4.0, "euler", "normal", tiny_models.conditioning("sd15", 1),
                               tiny_models.conditioning("sd15", 2), latent, denoise=denoise, disable_pbar=True, seed=seed)


def structure_table():
    base = tiny_models.tiny_model("sd15")
    tiled = node("TiledBlendedDiffusion").execute(base, 192, 192, 64, 4)[0]
    scale = WORK / REF
    rows = []
    for denoise in (0.6, 1.0):
        for label in ("none", "gaussian", "fft"):
            errors = {k: [] for k in BANDS}
            for seed in range(3):
                reference = structured_reference(seed)
                model = tiled if label == "none" else guide(tiled, reference, label)
                out = upscale(model, reference, denoise, seed)
                z_l = reference_at(reference, (WORK, WORK))
                for k, amount in BANDS.items():
                    errors[k].append(lowfreq_error(out, z_l, k, working_band(k, amount, scale)))
            rows.append((denoise, label, *(sum(v) / len(v) for v in errors.values())))
    print(f"Low-frequency error against the reference (tiny SD1.5, {REF}x{REF} -> {WORK}x{WORK} latent, 2x2 tiles, "
          f"euler {STEPS} steps, cfg 4, mean of 3 seeds)")
    print("| denoise | guide    | LF error, Gaussian band (sigma 1 ref cell) | LF error, FFT band (0.5 ref Nyquist) |")
    print("|---------|----------|------|------|")
    for denoise, label, g_err, f_err in rows:
        print(f"| {denoise:.1f}     | {label:<8} | {g_err:.4f} | {f_err:.4f} |")


def best_of(fn, repeats=7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cost_table():
    base = tiny_models.tiny_model("sd15")
    sigmas = torch.linspace(10, 0, STEPS + 1)
    print("\nCost per step (one CPU thread): the guide's post-CFG call vs one model evaluation (cond + uncond batch)")
    print("| working latent | scale | model eval ms | guide gaussian ms | ratio | guide fft ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for work, ref in ((64, 32), (128, 32), (512, 128)):
        x = torch.randn(2, 4, work, work)
        context = torch.randn(2, 77, tiny_models.CONTEXT_DIM)
        t = torch.full((2,), 500.0)
        with torch.no_grad():
            model_ms = 1e3 * best_of(lambda: base.model.apply_model(x, t, c_crossattn=context), 3) if work <= 128 else None
        reference = torch.randn(1, 4, ref, ref)
        args = {"denoised": torch.randn(1, 4, work, work), "sigma": torch.tensor([5.0]),
                "model_options": {"transformer_options": {"sample_sigmas": sigmas}}}
        cells = []
        for kind in ("gaussian", "fft"):
            post_cfg = guide(base, reference, kind).model_options["sampler_post_cfg_function"][-1]
            guide_ms = 1e3 * best_of(lambda: post_cfg(args))
            cells.append(f"{guide_ms:.2f} | " + (f"{100 * guide_ms / model_ms:.2f}%" if model_ms else "n/a (4K latent)"))
        model_cell = f"{model_ms:.1f}" if model_ms else "n/a"
        print(f"| {work}x{work} | x{work / ref:g} | {model_cell} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    structure_table()
    cost_table()
