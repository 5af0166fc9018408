"""Reading LIIF and implicit-decoder checkpoints in their official layouts, with clear refusals.

Two layouts, read with ``torch.load(weights_only=True)`` or safetensors, never by unpickling code:

- LIIF's (yinboc/liif ``train_liif.py``): ``{'model': {'name': 'liif', 'args': {...}, 'sd': {...}}}``
  with ``encoder.*`` (EDSR-baseline, EDSR or RDN without up-sampling) and ``imnet.layers.N.*``.
- The first stage of arbitrary-scale latent diffusion with an implicit neural decoder
  (zhenshij/arbitrary-scale-diffusion, ``ldm/models/firststagemodel.py``): class ``IND`` holds
  ``decoder`` = Sequential(1x1 conv, trunk) and ``inr`` = LIIF, so inside the Lightning ``state_dict``
  (or LIIF-style ``model.sd``) of a ``FirstStageModel`` the keys are
  ``decoder.decoder.0.*`` (1x1 conv), ``decoder.decoder.1.*`` (trunk: conv_in, mid, up.N.block),
  ``decoder.inr.imnet.layers.N.*``, beside the encoder's ``encoder.0.*`` / ``encoder.1.*``. Any
  prefix before ``inr.`` is accepted (a bare IND, or ``first_stage_model.decoder.`` inside an LDM).
  ``train/train_implicit_decoder.py`` saves this layout as safetensors with metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from ..checkpoints import (CheckpointError, describe_state_dict, is_safetensors, key_mismatch, load_torch_file,
                           summarise, unreadable)
from .model import ImplicitImageFunction, LIIFHead
from .encoders import EDSR, RDN, DecoderTrunk, TrunkConfig, trunk_config_from_state_dict

DECODER_FORMAT = "cupscale-implicit-decoder"
ENCODERS = {  # LIIF encoder_spec name -> (class, the official factory's defaults)
    "edsr-baseline": (EDSR, {"n_resblocks": 16, "n_feats": 64, "res_scale": 1}),
    "edsr": (EDSR, {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1}),
    "rdn": (RDN, {"G0": 64, "RDNkSize": 3, "RDNconfig": "B"}),
}
# Keys the official EDSR saves but never uses: its mean-shift layers and, for LIIF, no tail.
UNUSED_ENCODER_KEYS = ("encoder.sub_mean.", "encoder.add_mean.", "encoder.tail.")
HEAD_KEY = "inr.imnet.layers.0.weight"
# Where ImplicitImageFunction's parts sit in each official layout: (our prefix, theirs).
LIIF_LAYOUT = (("features.", "encoder."), ("head.", ""))
IND_LAYOUT = (("features.", "decoder."), ("head.", "inr."))
LIGHTNING_PREFIX = "decoder."  # FirstStageModel.decoder is the IND


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The file's object and its safetensors metadata (empty for torch files)."""
    path = Path(path)
    try:
        if is_safetensors(path):
            with safetensors.safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return safetensors.torch.load_file(str(path)), metadata
        return load_torch_file(path), {}
    except Exception as e:  # torch and safetensors raise many types for a damaged file
        raise unreadable(e, path) from e


def state_dict_of(obj) -> dict:
    """The state dict inside a Lightning checkpoint, LIIF's ``model.sd`` wrapping, or a bare one."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj["model"].get("sd"), dict):
        return obj["model"]["sd"]
    if isinstance(obj, dict):
        return obj
    raise CheckpointError(f"expected a dict of tensors, found a {type(obj).__name__}")


def file_key(key: str, layout: tuple[tuple[str, str], ...], prefix: str = "") -> str:
    """The name a parameter of ours has in an official layout."""
    for ours, theirs in layout:
        if key.startswith(ours):
            return prefix + theirs + key[len(ours):]
    raise KeyError(key)


def check_and_load(module: nn.Module, sd: dict[str, torch.Tensor], name: str,
                   layout: tuple[tuple[str, str], ...], prefix: str = "") -> None:
    """Load ``sd`` (keys as in the file) into ``module`` after naming, in the file's own key names,
    every missing, unexpected or mis-shaped key."""
    params = module.state_dict()
    own = {file_key(k, layout, prefix): k for k in params}
    problems = key_mismatch({theirs: tuple(params[ours].shape) for theirs, ours in own.items()}, sd).problems()
    if problems:
        raise CheckpointError(f"{name} does not match the architecture it describes: "
                              + "; ".join(f"{len(keys)} {what}: {summarise(keys, 5)}" for what, keys in problems)
                              + ". The file is incomplete or comes from a modified model.")
    module.load_state_dict({ours: sd[theirs] for theirs, ours in own.items()})


def liif_from_checkpoint(obj, name: str, operations=nn) -> ImplicitImageFunction:
    """Build a pixel-space LIIF from LIIF's official ``{'model': {'name', 'args', 'sd'}}``, its layers from
    ``operations``."""
    spec = obj.get("model") if isinstance(obj, dict) else None
    if not (isinstance(spec, dict) and {"name", "args", "sd"} <= spec.keys()):
        kind = describe_state_dict(obj) if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{name} is not a LIIF checkpoint: it looks like {kind}. Expected "
                              f"{{'model': {{'name': 'liif', 'args', 'sd'}}}} as saved by yinboc/liif (e.g. "
                              f"edsr-baseline-liif.pth, rdn-liif.pth). ESRGAN-style models load with ComfyUI's "
                              f"'Load Upscale Model'.")
    if spec["name"] != "liif":
        raise CheckpointError(f"{name} is a '{spec['name']}' model from the LIIF code base, not 'liif'; only LIIF "
                              f"models (EDSR-baseline-LIIF, RDN-LIIF) decode at any scale.")
    args = spec["args"]
    encoder_spec = args.get("encoder_spec", {})
    kind = encoder_spec.get("name")
    if kind not in ENCODERS:
        raise CheckpointError(f"{name} uses a '{kind}' encoder; supported: {', '.join(ENCODERS)}.")
    encoder_args = {**ENCODERS[kind][1], **encoder_spec.get("args", {})}
    if not encoder_args.pop("no_upsampling", False):
        raise CheckpointError(f"{name}: its {kind} encoder up-samples (no_upsampling is false); LIIF's encoders "
                              f"keep the input's resolution.")
    for unused in ("scale", "rgb_range"):
        encoder_args.pop(unused, None)
    encoder = ENCODERS[kind][0](**encoder_args, operations=operations)
    imnet_spec = args.get("imnet_spec") or {}
    if imnet_spec.get("name") != "mlp":
        raise CheckpointError(f"{name}: expected an 'mlp' imnet, found {imnet_spec.get('name')!r}.")
    head = LIIFHead(encoder.out_dim, list(imnet_spec["args"]["hidden_list"]), imnet_spec["args"].get("out_dim", 3),
                    feat_unfold=args.get("feat_unfold", True), local_ensemble=args.get("local_ensemble", True),
                    cell_decode=args.get("cell_decode", True), operations=operations)
    model = ImplicitImageFunction(encoder, head, encoder.receptive_radius)
    sd = {k: v for k, v in spec["sd"].items() if not k.startswith(UNUSED_ENCODER_KEYS)}
    check_and_load(model, sd, name, LIIF_LAYOUT)
    return model.eval()


def load_liif(path: str | Path, operations=nn) -> ImplicitImageFunction:
    obj, _ = read_checkpoint(path)
    return liif_from_checkpoint(obj, Path(path).name, operations)


@dataclass(frozen=True)
class DecoderInfo:
    """What an implicit latent decoder was built for, from its shapes and metadata."""

    trunk: TrunkConfig
    hidden: tuple[int, ...]
    latent: str  # e.g. "sd15", "sdxl", or "unknown" for checkpoints without our metadata

    def describe(self) -> str:
        return (f"implicit decoder for {self.trunk.z_channels}-channel latents ({self.latent}), trunk "
                f"{list(self.trunk.level_channels)}x{self.trunk.blocks_per_level}, LIIF MLP {list(self.hidden)}")


@dataclass(frozen=True)
class ImplicitDecoder:
    """The IMPLICIT_DECODER that flows between nodes: the model and what it decodes."""

    model: ImplicitImageFunction
    info: DecoderInfo


def head_from_state_dict(sd: dict[str, torch.Tensor], feat_dim: int, local_ensemble: bool, name: str,
                         operations=nn) -> LIIFHead:
    """A LIIF head whose options follow from its first layer's width (``imnet.layers.*`` keys)."""
    linear = sorted({int(k.split(".")[2]) for k in sd if k.startswith("imnet.layers.") and k.endswith(".weight")})
    widths = [sd[f"imnet.layers.{i}.weight"].shape[0] for i in linear]
    in_dim = sd["imnet.layers.0.weight"].shape[1]
    for unfold in (False, True):
        extra = in_dim - feat_dim * (9 if unfold else 1)
        if extra in (2, 4):
            return LIIFHead(feat_dim, widths[:-1], widths[-1], feat_unfold=unfold,
                            local_ensemble=local_ensemble, cell_decode=extra == 4, operations=operations)
    raise CheckpointError(f"{name}: the LIIF MLP takes {in_dim} inputs, which fits no head on the trunk's "
                          f"{feat_dim} channels (expected {feat_dim}, or 9x for unfolding, plus 2 or 4).")


def decoder_from_state_dict(sd: dict[str, torch.Tensor], metadata: dict[str, str], name: str,
                            operations=nn) -> ImplicitDecoder:
    """Build the implicit neural decoder (1x1 conv + trunk + LIIF) from any state dict that holds an IND
    under some prefix; refuse other models with what they look like."""
    heads = [k for k in sd if k.endswith(HEAD_KEY)]
    if not heads:
        raise CheckpointError(f"{name} is not an implicit latent decoder: it looks like {describe_state_dict(sd)}. "
                              f"Expected the first-stage keys of arbitrary-scale latent diffusion "
                              f"(decoder.decoder.0.*, decoder.decoder.1.*, decoder.inr.imnet.layers.*). A plain VAE "
                              f"loads with 'Load VAE'; to get an implicit decoder for its latents, train one with "
                              f"train/train_implicit_decoder.py.")
    prefix = heads[0][:-len(HEAD_KEY)]
    ind = {k: v for k, v in sd.items() if k.startswith((prefix + "decoder.", prefix + "inr."))}
    trunk_sd = {k[len(prefix + "decoder.1."):]: v for k, v in ind.items() if k.startswith(prefix + "decoder.1.")}
    try:
        config = trunk_config_from_state_dict(trunk_sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{name} has a LIIF head under '{prefix}inr.' but no complete decoder trunk under "
                              f"'{prefix}decoder.1.' (missing {e}).") from e
    if any(".to_qkv." in k for k in trunk_sd):
        raise CheckpointError(f"{name} uses linear attention in its trunk; only the vanilla attention of the "
                              f"released configs is supported.")
    ensemble = metadata.get("local_ensemble", "true").lower() == "true"
    head = head_from_state_dict({k[len(prefix + "inr."):]: v for k, v in ind.items() if k.startswith(prefix + "inr.")},
                                config.out_dim, ensemble, name, operations)
    model = implicit_decoder(config, head, operations)
    check_and_load(model, ind, name, IND_LAYOUT, prefix)
    hidden = tuple(layer.out_features for layer in head.imnet.layers if isinstance(layer, nn.Linear))[:-1]
    return ImplicitDecoder(model.eval(), DecoderInfo(config, hidden, metadata.get("latent", "unknown")))


def implicit_decoder(config: TrunkConfig, head: LIIFHead, operations=nn) -> ImplicitImageFunction:
    """IND: the 1x1 conv on the latent (post_quant_conv's place), the trunk, the LIIF head."""
    features = nn.Sequential(operations.Conv2d(config.z_channels, config.z_channels, 1),
                             DecoderTrunk(config, operations))
    return ImplicitImageFunction(features, head, receptive_radius=None)


def load_implicit_decoder(path: str | Path, operations=nn) -> ImplicitDecoder:
    obj, metadata = read_checkpoint(path)
    name = Path(path).name
    try:
        sd = state_dict_of(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from e
    return decoder_from_state_dict(sd, metadata, name, operations)


def decoder_state_dict(model: ImplicitImageFunction) -> dict[str, torch.Tensor]:
    """The model's weights under the Lightning first-stage keys (``decoder.decoder.*``, ``decoder.inr.*``)."""
    return {file_key(k, IND_LAYOUT, LIGHTNING_PREFIX): v.detach().contiguous() for k, v in model.state_dict().items()}
