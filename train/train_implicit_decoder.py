"""Fit the implicit neural decoder of arbitrary-scale latent diffusion for a VAE's latent space, the VAE encoder frozen.

The decoder (Fig. 3 of the paper) is a 1x1 conv, the VAE decoder's trunk without up-sampling, and a
LIIF head (MLP [256] * 4, local ensemble, cell decoding). The recipe is the paper's first stage
(``FirstStageModel.get_input`` / ``training_step`` in zhenshij/arbitrary-scale-diffusion, after LIIF
Sec. 3.2): every step takes random crops of the training images, encodes them with the frozen
encoder, resizes the crops to a random target size between x1 and x8 of the latent (bicubic),
samples ``sample_q`` pixels of that target, decodes exactly those points and minimises the L1
error. Choices of ours, beside the paper's: the target's height and width are drawn separately (the
paper draws one square size), the resize is antialiased, and the trunk starts from the VAE's own
decoder weights (the trunk has the same layers minus the up-sampling), which the paper leaves open.

The frozen encoder is a ComfyUI VAE (``comfy.sd.VAE``), so the decoder learns exactly the raw
latents that ComfyUI's VAE Encode and the samplers produce. From the command line::

    python train/train_implicit_decoder.py --images photos/ --vae ComfyUI/models/vae/sdxl_vae.safetensors \
        --latent sdxl --out ComfyUI/models/implicit_decoders/sdxl_implicit.safetensors

finds ComfyUI like the tests do ($COMFYUI_PATH, the ComfyUI holding this pack, or ~/comfy/ComfyUI)
and loads the VAE with ``comfy.utils.load_torch_file`` + ``comfy.sd.VAE``. From Python, pass any
object with ComfyUI's ``VAE.encode(pixels)`` (B, H, W, 3 in 0..1 -> raw latent) and
``first_stage_model.decoder`` / ``post_quant_conv`` to :func:`train` (the tests pass a tiny VAE).

Training is resumable: ``<out>.train-state.pt`` keeps the weights, the optimiser, the step and the
sampler's random state (``--resume``), and the safetensors file is rewritten at every save, ready for
the ImplicitLatentDecode node. See train/README.md for what a useful decoder costs.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cupscale.liif.model import LIIFHead, ImplicitImageFunction, pixel_positions, to_signed  # noqa: E402
from cupscale.liif.checkpoints import DECODER_FORMAT, decoder_state_dict, implicit_decoder  # noqa: E402
from cupscale.liif.encoders import trunk_config_from_state_dict  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class TrainConfig:
    """Everything that shapes a run. Fields other than ``steps``, ``save_every`` and ``resume``
    must match when a run is resumed."""

    images: str
    out: str
    latent: str = "sd15"  # written into the file's metadata, shown by the loader
    steps: int = 200_000
    batch_size: int = 16
    crop: int = 256  # training crops, pixels; a multiple of the VAE's ratio (8)
    min_target: int = 0  # smallest target side; 0 = the latent's side (x1)
    sample_q: int = 2304  # query points per image and step (LIIF's and the paper's value)
    lr: float = 1e-4
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    seed: int = 0
    warm_start: bool = True  # trunk and 1x1 conv from the VAE's decoder and post_quant_conv
    save_every: int = 1000
    resume: bool = False
    device: str = "cpu"

    def shape_fields(self) -> dict:
        fields = asdict(self)
        for volatile in ("steps", "save_every", "resume", "device", "images", "out"):
            fields.pop(volatile)
        fields["hidden"] = list(fields["hidden"])
        return fields

    @property
    def state_path(self) -> Path:
        return Path(self.out).with_suffix(".train-state.pt")


def load_images(folder: str, crop: int) -> list[torch.Tensor]:
    """Every image of ``folder`` at least ``crop`` pixels on each side, as uint8 (H, W, 3)."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in paths:
        with Image.open(path) as im:
            if min(im.size) >= crop:
                images.append(torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
                              .reshape(im.size[1], im.size[0], 3))
    if not images:
        raise ValueError(f"--images {folder}: found no image of at least {crop}x{crop} pixels among {len(paths)} "
                         f"files ({', '.join(sorted(IMAGE_SUFFIXES))}); add images or lower --crop.")
    return images


def random_crops(images: list[torch.Tensor], crop: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random crops, randomly mirrored, as a ComfyUI IMAGE (B, crop, crop, 3) in 0..1."""
    out = []
    for i in torch.randint(len(images), (batch,), generator=gen).tolist():
        image = images[i]
        top = int(torch.randint(image.shape[0] - crop + 1, (1,), generator=gen))
        left = int(torch.randint(image.shape[1] - crop + 1, (1,), generator=gen))
        patch = image[top:top + crop, left:left + crop]
        out.append(patch.flip(1) if torch.rand((), generator=gen) < 0.5 else patch)
    return torch.stack(out).float() / 255


def random_size(low: int, high: int, gen: torch.Generator) -> tuple[int, int]:
    """A target (height, width), each side uniform in ``low..high``."""
    return tuple(int(torch.randint(low, high + 1, (1,), generator=gen)) for _ in range(2))


def new_decoder(vae, config: TrainConfig) -> ImplicitImageFunction:
    """IND shaped like the VAE's decoder trunk, optionally starting from its weights."""
    decoder_sd = vae.first_stage_model.decoder.state_dict()
    trunk = trunk_config_from_state_dict(decoder_sd)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = implicit_decoder(trunk, LIIFHead(trunk.out_dim, list(config.hidden), feat_unfold=False))
    if config.warm_start:
        conv, body = model.features
        conv.load_state_dict(vae.first_stage_model.post_quant_conv.state_dict())
        body.load_state_dict({k: decoder_sd[k] for k in body.state_dict()})
    return model


def l1_at_sampled_points(model: ImplicitImageFunction, latent: torch.Tensor, target: torch.Tensor,
                         sample_q: int, gen: torch.Generator) -> torch.Tensor:
    """L1 between the decoder and ``target`` (B, 3, H, W in -1..1) at ``sample_q`` random pixels."""
    (h, w), (th, tw) = latent.shape[-2:], target.shape[-2:]
    picked = torch.randperm(th * tw, generator=gen)[:sample_q]
    py, px = picked // tw, picked % tw
    uy, ux = pixel_positions(th, h)[py], pixel_positions(tw, w)[px]
    pred = model.head.decode(model.head.project(model.features(latent)), (0, 0), (h, w), uy, ux, (h / th, w / tw))
    truth = target[:, :, py.to(target.device), px.to(target.device)].transpose(1, 2)
    return (pred - truth).abs().mean()


def save_decoder(model: ImplicitImageFunction, config: TrainConfig, step: int) -> None:
    metadata = {"format": DECODER_FORMAT, "latent": config.latent, "local_ensemble": "true", "steps": str(step)}
    write_atomically(Path(config.out), lambda p: safetensors.torch.save_file(decoder_state_dict(model), str(p), metadata))


def write_atomically(path: Path, write) -> None:
    """Write to a temporary file and rename, so an interrupted save never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def train(config: TrainConfig, vae, progress: bool = True) -> list[float]:
    """Run (or resume) training; returns the loss of every step so far."""
    images = load_images(config.images, config.crop)
    gen = torch.Generator().manual_seed(config.seed)
    model = new_decoder(vae, config).to(config.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, losses = 0, []
    if config.resume and config.state_path.exists():
        state = torch.load(config.state_path, map_location=config.device, weights_only=True)
        if state["config"] != config.shape_fields():
            raise ValueError(f"--resume: {config.state_path} was made with {state['config']}, this run asks for "
                             f"{config.shape_fields()}; resume with the same settings or start a new --out.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, losses = state["step"], list(state["losses"])
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="implicit decoder", unit="step")
    while step < config.steps:
        pixels = random_crops(images, config.crop, config.batch_size, gen)
        with torch.no_grad():
            latent = vae.encode(pixels).to(config.device, torch.float32)
        low = config.min_target or latent.shape[-1]
        target = F.interpolate(to_signed(pixels), size=random_size(low, config.crop, gen), mode="bicubic",
                               antialias=True).to(config.device)
        loss = l1_at_sampled_points(model, latent, target, config.sample_q, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(l1=f"{losses[-1]:.4f}")
        if step % config.save_every == 0 or step == config.steps:
            save_decoder(model, config, step)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "generator": gen.get_state(), "losses": losses, "config": config.shape_fields()}
            write_atomically(config.state_path, lambda p: torch.save(state, p))
    bar.close()
    return losses


def load_comfy_vae(path: str, cpu: bool):
    """A VAE through ComfyUI's own loading, exactly as the VAELoader node builds it."""
    from harness import comfy_host
    comfy_host.prepare(cpu=cpu)
    import comfy.sd
    import comfy.utils
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(path, safe_load=True))


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="folder of training images (png, jpg, webp, bmp)")
    p.add_argument("--vae", required=True, help="VAE file (e.g. sdxl_vae.safetensors), loaded through ComfyUI")
    p.add_argument("--out", required=True, help="decoder .safetensors, e.g. ComfyUI/models/implicit_decoders/x.safetensors")
    p.add_argument("--latent", default="sd15", help="label of the latent space, stored in the file (sd15, sdxl)")
    defaults = TrainConfig(images="", out="")
    for name in ("steps", "batch_size", "crop", "min_target", "sample_q", "seed", "save_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--hidden", default=",".join(map(str, defaults.hidden)), help="LIIF MLP widths, comma-separated")
    p.add_argument("--no-warm-start", action="store_true", help="do not start the trunk from the VAE's decoder")
    p.add_argument("--resume", action="store_true", help="continue from <out>.train-state.pt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.crop % 8:
        p.error(f"--crop {a.crop} must be a multiple of 8 (the VAE's down-sampling)")
    config = TrainConfig(images=a.images, out=a.out, latent=a.latent, steps=a.steps, batch_size=a.batch_size,
                         crop=a.crop, min_target=a.min_target, sample_q=a.sample_q, lr=a.lr,
                         hidden=tuple(int(v) for v in a.hidden.split(",")), seed=a.seed,
                         warm_start=not a.no_warm_start, save_every=a.save_every, resume=a.resume, device=a.device)
    return config, a.vae


def main(argv: list[str] | None = None) -> None:
    config, vae_path = parse_args(argv)
    losses = train(config, load_comfy_vae(vae_path, cpu=config.device == "cpu"))
    print(f"saved {config.out} after {len(losses)} steps; last L1 {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
