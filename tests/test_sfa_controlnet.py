"""XPSR's SFA ControlNet in a real ComfyUI: the released key layout, Eq. 2, KSampler runs, tiles, bad files.

The XPSR files here are built from scratch in the official diffusers layout (qyp2000/XPSR
models/xpsr/controlnet.py, unet_2d_blocks.py) at the tiny SD1.5 model's channel counts.
"""
from __future__ import annotations

import asyncio
import math

import pytest
import torch
import torch.nn.functional as F

from cupscale.xpsr.sfa import SemanticFusionAttention, TransformerSpec
from harness.comfy_host import PromptError, run_prompt
from host_helpers import pack_module, smooth_latent
from tiny_xpsr import CONTEXT, CONTROLNET, HEADS, UNET, controlnet_shapes, conv, release, save, seeded, transformer

STEPS = 3


@pytest.fixture(scope="module")
def xpsr_dir(host, tmp_path_factory):
    """models/xpsr with two release folders (safetensors, .bin), single files and wrong files."""
    import folder_paths
    root = tmp_path_factory.mktemp("xpsr")
    release(root, "ckpt-st", "safetensors")
    release(root, "ckpt-bin", "bin")
    save(CONTROLNET, root / "xpsr_controlnet.safetensors")
    save(UNET, root / "xpsr_unet.safetensors")
    plain = seeded(controlnet_shapes(sfa_attention=False), 13)
    save(plain, root / "plain_controlnet.safetensors")
    save(plain, root / "plain_controlnet.bin", torch_format=True)
    folder_paths.add_model_folder_path("xpsr", str(root))
    return root


@pytest.fixture(scope="module")
def loaded(host, xpsr_dir):
    loader = host.NODE_CLASS_MAPPINGS["SFAControlNetLoader"]()
    return loader.execute("ckpt-st/controlnet/diffusion_pytorch_model.safetensors",
                       "ckpt-st/unet/diffusion_pytorch_model.safetensors")[0]




# -- Eq. 2 from the paper, independently ---------------------------------------------------------

def reference_ca(p: dict, x: torch.Tensor, context: torch.Tensor, heads: int, linear: bool) -> torch.Tensor:
    """One cross-attention "CA" as SD's spatial transformer computes it, written out."""
    b, c, h, w = x.shape
    hidden = F.group_norm(x, 32, p["norm.weight"], p["norm.bias"], eps=1e-6)
    if linear:
        hidden = hidden.permute(0, 2, 3, 1).reshape(b, h * w, c) @ p["proj_in.weight"].T + p["proj_in.bias"]
    else:
        hidden = F.conv2d(hidden, p["proj_in.weight"], p["proj_in.bias"]).permute(0, 2, 3, 1).reshape(b, h * w, c)

    def attend(q_in, kv_in, prefix):
        q, k, v = (t @ p[f"{prefix}.to_{n}.weight"].T for t, n in ((q_in, "q"), (kv_in, "k"), (kv_in, "v")))
        d = c // heads
        q, k, v = (t.reshape(b, -1, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out = (weights @ v).permute(0, 2, 1, 3).reshape(b, -1, c)
        return out @ p[f"{prefix}.to_out.0.weight"].T + p[f"{prefix}.to_out.0.bias"]

    ln = lambda t, n: F.layer_norm(t, (c,), p[f"{n}.weight"], p[f"{n}.bias"], eps=1e-5)  # noqa: E731
    blk = "transformer_blocks.0"
    hidden = attend(ln(hidden, f"{blk}.norm1"), ln(hidden, f"{blk}.norm1"), f"{blk}.attn1") + hidden
    hidden = attend(ln(hidden, f"{blk}.norm2"), context, f"{blk}.attn2") + hidden
    proj = ln(hidden, f"{blk}.norm3") @ p[f"{blk}.ff.net.0.proj.weight"].T + p[f"{blk}.ff.net.0.proj.bias"]
    a, gate = proj.chunk(2, dim=-1)
    hidden = (a * F.gelu(gate)) @ p[f"{blk}.ff.net.2.weight"].T + p[f"{blk}.ff.net.2.bias"] + hidden
    if linear:
        hidden = hidden @ p["proj_out.weight"].T + p["proj_out.bias"]
        return hidden.reshape(b, h, w, c).permute(0, 3, 1, 2) + x
    hidden = hidden.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return F.conv2d(hidden, p["proj_out.weight"], p["proj_out.bias"]) + x


def reference_sfa(p: dict, x, c_h, c_l, heads, linear):
    """Eq. 2: x_{k+1} = CA_f(CA_h(x_k, c_h), CA_l(x_k, c_l)); CA_f's query from the high-level
    result, keys and values from the low-level result."""
    part = lambda name: {k[len(name) + 1:]: v for k, v in p.items() if k.startswith(name + ".")}  # noqa: E731
    high = reference_ca(part("high"), x, c_h, heads, linear)
    low = reference_ca(part("low"), x, c_l, heads, linear)
    low_tokens = low.flatten(2).transpose(1, 2)
    return reference_ca(part("fuse"), high, low_tokens, heads, linear)


@pytest.mark.parametrize("linear", [False, True])
def test_sfa_module_is_eq2(linear):
    channels, context, heads = 64, 48, 4
    module = SemanticFusionAttention(TransformerSpec(channels, context, heads, 1, linear))
    params = seeded({k: tuple(v.shape) for k, v in module.state_dict().items()}, 5)
    module.load_state_dict(params)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, channels, 6, 5, generator=g)
    c_h, c_l = torch.randn(2, 77, context, generator=g), torch.randn(2, 31, context, generator=g)
    with torch.no_grad():
        ours = module(x, c_h, c_l)
    expected = reference_sfa(params, x, c_h, c_l, heads, linear)
    assert (ours - expected).abs().max() <= 1e-5
    # The low-level description reaches the output through CA_f.
    with torch.no_grad():
        assert (module(x, c_h, torch.randn(2, 31, context, generator=g)) - ours).abs().max() > 1e-3


# -- reading the release -------------------------------------------------------------------------

def test_release_folders_load_through_the_node_from_safetensors_and_bin(host, xpsr_dir, loaded):
    import folder_paths
    paths, extensions = folder_paths.folder_names_and_paths["xpsr"]
    assert any(p.endswith("models/xpsr") for p in paths) and {".safetensors", ".bin"} <= set(extensions)
    loader = host.NODE_CLASS_MAPPINGS["SFAControlNetLoader"]()
    from_bin = loader.execute("ckpt-bin/controlnet/diffusion_pytorch_model.bin",
                           "ckpt-bin/unet/diffusion_pytorch_model.bin")[0]
    ours, theirs = loaded.control.control_model.state_dict(), from_bin.control.control_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # Each official tensor lands where its role is, the training-only DFC heads nowhere.
    assert torch.equal(ours["input_blocks.3.1.low.transformer_blocks.0.attn2.to_k.weight"],
                       CONTROLNET["down_blocks.1.attentions_lowlevel.0.transformer_blocks.0.attn2.to_k.weight"])
    assert torch.equal(ours["middle_block.1.fuse.proj_in.weight"],
                       CONTROLNET["mid_block.attentions_connect.0.proj_in.weight"])
    assert torch.equal(ours["input_blocks.2.0.op.weight"], CONTROLNET["down_blocks.0.downsamplers.0.conv.weight"])
    assert torch.equal(ours["zero_convs.3.0.weight"], CONTROLNET["controlnet_down_blocks.3.weight"])
    assert torch.equal(ours["input_hint_block.14.weight"], CONTROLNET["controlnet_cond_embedding.conv_out.weight"])
    assert torch.equal(ours["conditional_attention.1.transformer_blocks.0.attn2.to_v.weight"],
                       UNET["up_blocks.0.pixel_attentions.1.transformer_blocks.0.attn2.to_v.weight"])
    assert torch.equal(ours["conditional_attention.3.proj_out.weight"],
                       UNET["up_blocks.1.pixel_attentions.1.proj_out.weight"])
    assert not any("rgb" in k or "degradation" in k for k in ours)
    n_params = sum(v.numel() for k, v in CONTROLNET.items() if "to_rgbs" not in k and "degradation" not in k)
    n_params += sum(v.numel() for k, v in UNET.items() if "pixel_attentions" in k)
    assert sum(v.numel() for v in ours.values()) == n_params
    # Heads come from config.json (2 here), without it from SD1.5's (8).
    model = loaded.control.control_model
    assert model.input_blocks[3][1].fuse.transformer_blocks[0].attn2.heads == HEADS
    single = loader.execute("xpsr_controlnet.safetensors", "xpsr_unet.safetensors")[0]
    assert single.control.control_model.conditional_attention[0].transformer_blocks[0].attn1.heads == 8


def test_standard_parts_are_named_as_comfyui_names_the_sd_unet(host, xpsr_dir):
    import comfy.utils
    from cupscale.xpsr.checkpoint import controlnet_renames, load_xpsr, rename
    comfy_names = comfy.utils.unet_to_diffusers({
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1})
    arch = load_xpsr(xpsr_dir / "ckpt-st", xpsr_dir / "ckpt-st").architecture
    placed, unplaced = rename({k: k for k in CONTROLNET}, controlnet_renames(arch))
    ours = {official: name for name, official in placed.items()}
    shared = [k for k in comfy_names if k in ours]
    assert len(shared) > 60 and all(k.startswith(("down_blocks", "mid_block", "conv_in", "time_emb")) for k in shared)
    # The high-level branch of SFA sits where the UNet (and ComfyUI's ControlNet) has its cross-attention.
    assert {k: ours[k].replace(".1.high.", ".1.") for k in shared} == {k: comfy_names[k] for k in shared}
    assert all(k.startswith(("controlnet_cond_embedding.to_rgbs", "conv_degradation")) for k in unplaced)


# -- sampling -------------------------------------------------------------------------------------



def lr_image(h, w, seed=5):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def ksampler(host, model, pos, neg, latent, steps=STEPS, sampler="euler", scheduler="normal"):
    node = host.NODE_CLASS_MAPPINGS["KSampler"]()
    out = node.sample(model, 7, steps, 5.5, sampler, scheduler, pos, neg, {"samples": latent}, denoise=0.8)
    return out[0]["samples"]


@pytest.fixture(scope="module")
def xpsr(host, loaded):
    apply = host.NODE_CLASS_MAPPINGS["SFAControlNetApply"]()
    return lambda model, pos, neg, low, image, strength=1.0, **kw: apply.execute(
        model, pos, neg, low, loaded, image, strength, kw.pop("start", 0.0), kw.pop("end", 1.0), **kw)


def test_ksampler_runs_xpsr_and_strength_zero_is_plain_sd(host, tiny, xpsr):
    model = tiny.tiny_model("sd15")
    pos, neg, low = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2), tiny.conditioning("sd15", 3)
    latent, image = smooth_latent(32, 32), lr_image(256, 256)
    plain = ksampler(host, model, pos, neg, latent)
    x_model, x_pos, x_neg = xpsr(model, pos, neg, low, image)
    controlled = ksampler(host, x_model, x_pos, x_neg, latent)
    assert torch.isfinite(controlled).all() and (controlled - plain).abs().mean() > 1e-3
    z_model, z_pos, z_neg = xpsr(model, pos, neg, low, image, strength=0.0)
    assert (ksampler(host, z_model, z_pos, z_neg, latent) - plain).abs().max() <= 1e-5
    # The Conditional Attention counts: the same control on the unpatched model gives another result,
    # and so does another low-level description.
    assert (ksampler(host, model, x_pos, x_neg, latent) - controlled).abs().mean() > 1e-4
    o_model, o_pos, o_neg = xpsr(model, pos, neg, tiny.conditioning("sd15", 4), image)
    assert (ksampler(host, o_model, o_pos, o_neg, latent) - controlled).abs().mean() > 1e-4
    # Inputs are left as they were.
    assert "control" not in pos[0][1] and not model.object_patches


def test_each_pass_gets_its_low_level_prompt_and_each_output_block_its_residual(host, tiny, xpsr, loaded):
    module = pack_module(host, "nodes.conditional_attention")
    model = tiny.tiny_model("sd15")
    pos, neg = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2)
    low, low_neg = tiny.conditioning("sd15", 3, tokens=154), tiny.conditioning("sd15", 4)
    x_model, x_pos, x_neg = xpsr(model, pos, neg, low, lr_image(256, 256), low_level_negative=low_neg)
    control_model = loaded.control.control_model
    seen_low, attended = [], []
    forward, attend = type(control_model).forward, module.ConditionalContext.attend

    def spy_forward(self, x, hint, timesteps, context, low_level_context=None, **kw):
        seen_low.append(low_level_context)
        return forward(self, x, hint, timesteps, context, low_level_context, **kw)

    def spy_attend(self, block, x):
        attended.append((block, tuple(x.shape), tuple(self.residuals[len(self.residuals) - 1 - block].shape)))
        return attend(self, block, x)
    type(control_model).forward, module.ConditionalContext.attend = spy_forward, spy_attend
    try:
        ksampler(host, x_model, x_pos, x_neg, smooth_latent(32, 32), steps=1)
    finally:
        type(control_model).forward, module.ConditionalContext.attend = forward, attend
    # One batch of [cond, uncond] (ComfyUI orders it uncond first): its rows get their own low-level.
    (batch,) = seen_low
    assert batch.shape == (2, 154, CONTEXT)
    assert torch.equal(batch[0], low_neg[0][0][0].repeat(2, 1)) and torch.equal(batch[1], low[0][0][0])
    # Every output block once, before its upsampler, on the residual of the skip it consumes.
    assert attended == [(0, (2, 64, 16, 16), (2, 64, 16, 16)), (1, (2, 64, 16, 16), (2, 32, 16, 16)),
                        (2, (2, 32, 32, 32), (2, 32, 32, 32)), (3, (2, 32, 32, 32), (2, 32, 32, 32))]


def test_tiled_xpsr_runs_per_tile_on_its_crop_of_the_lr_image(host, tiny, xpsr, loaded):
    tiled = host.NODE_CLASS_MAPPINGS["TiledBlendedDiffusion"]()
    model = tiny.tiny_model("sd15")
    pos, neg, low = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2), tiny.conditioning("sd15", 3)
    image, latent = lr_image(384, 512, seed=8), smooth_latent(48, 64)
    x_model, x_pos, x_neg = xpsr(model, pos, neg, low, image)
    whole = ksampler(host, x_model, x_pos, x_neg, latent, steps=2)
    one_tile = tiled.execute(x_model, 512, 512, 64, 4)[0]
    assert (ksampler(host, one_tile, x_pos, x_neg, latent, steps=2) - whole).abs().max() <= 1e-5

    control_type = type(x_pos[0][1]["control"])
    seen, original = [], control_type.get_control

    def spy(self, x_noisy, t, cond, batched_number, transformer_options):
        out = original(self, x_noisy, t, cond, batched_number, transformer_options)
        published = transformer_options["cupscale_xpsr_conditional"]
        seen.append((transformer_options["cupscale_tiles"], self.cond_hint.clone(), published.residuals[0].shape))
        return out
    control_type.get_control = spy
    try:
        tiles = tiled.execute(x_model, 256, 256, 64, 4)[0]
        out = ksampler(host, tiles, x_pos, x_neg, latent, steps=2)
    finally:
        control_type.get_control = original
    assert torch.isfinite(out).all() and (out - whole).abs().mean() > 1e-4
    full = image.movedim(-1, 1)  # already the latent's size in pixels
    boxes = set()
    for batch, hint, residual in seen:
        assert residual[-2:] == (32, 32)
        for j, box in enumerate(batch.boxes):
            crop = full[:, :, box.top * 8:box.bottom * 8, box.left * 8:box.right * 8]
            assert torch.allclose(hint[j * batch.images:(j + 1) * batch.images], crop, atol=1e-6)
            boxes.add((box.top, box.left))
    assert len(boxes) == 6


# -- bad input -------------------------------------------------------------------------------------

def test_wrong_and_damaged_files_are_refused_saying_what_they_are(host, tiny, xpsr_dir):
    loader = host.NODE_CLASS_MAPPINGS["SFAControlNetLoader"]()
    unet = "xpsr_unet.safetensors"
    with pytest.raises(ValueError, match=r"controlnet: plain_controlnet.safetensors is a standard SD ControlNet.*"
                                         r"'Load ControlNet Model'"):
        loader.execute("plain_controlnet.safetensors", unet)
    save(tiny.tiny_controlnet("sd15").control_model.state_dict(), xpsr_dir / "comfy_controlnet.safetensors")
    with pytest.raises(ValueError, match=r"comfy_controlnet.safetensors is a standard SD ControlNet"):
        loader.execute("comfy_controlnet.safetensors", unet)
    unet_sd = tiny.tiny_model("sdxl").model.diffusion_model.state_dict()
    sdxl = {f"model.diffusion_model.{k}": v for k, v in unet_sd.items()}
    save(sdxl, xpsr_dir / "sdxl_base.safetensors")
    with pytest.raises(ValueError, match=r"sdxl_base.safetensors is an SDXL model checkpoint.*XPSR builds on SD1.5"):
        loader.execute("sdxl_base.safetensors", unet)
    with pytest.raises(ValueError, match=r"unet: xpsr_controlnet.safetensors is XPSR's ControlNet.*pixel_attentions"):
        loader.execute("xpsr_controlnet.safetensors", "xpsr_controlnet.safetensors")
    data = (xpsr_dir / "xpsr_controlnet.safetensors").read_bytes()
    (xpsr_dir / "truncated.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"controlnet: truncated.safetensors could not be read.*damaged or incomplete"):
        loader.execute("truncated.safetensors", unet)
    (xpsr_dir / "corrupt.bin").write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(ValueError, match=r"unet: corrupt.bin could not be read"):
        loader.execute("xpsr_controlnet.safetensors", "corrupt.bin")
    # Parts of two different checkpoints: the layout check names the mismatch.
    odd = dict(UNET, **seeded(transformer("up_blocks.1.pixel_attentions.1", 32, 48), 14))
    save(odd, xpsr_dir / "odd_unet.safetensors")
    with pytest.raises(ValueError, match=r"do not fit together.*wrong shape \(2\): conditional_attention.3"):
        loader.execute("xpsr_controlnet.safetensors", "odd_unet.safetensors")
    short = {k: v for k, v in UNET.items() if not k.startswith("up_blocks.1.pixel_attentions.1.")}
    save(short, xpsr_dir / "short_unet.safetensors")
    with pytest.raises(ValueError, match=r"do not fit together.*missing \(26\): conditional_attention.3.norm.weight"):
        loader.execute("xpsr_controlnet.safetensors", "short_unet.safetensors")
    rrdb = dict(CONTROLNET, **seeded(conv("controlnet_cond_embedding.preprocesser.0.rdb1.conv1", 16, 16), 15))
    save(rrdb, xpsr_dir / "rrdb_controlnet.safetensors")
    with pytest.raises(ValueError, match=r"2 weights have no place.*preprocesser.*use_rrdb"):
        loader.execute("rrdb_controlnet.safetensors", unet)


def test_apply_refuses_an_sdxl_model_and_an_rgba_image(host, tiny, xpsr):
    pos, neg, low = tiny.conditioning("sd15", 1), tiny.conditioning("sd15", 2), tiny.conditioning("sd15", 3)
    with pytest.raises(ValueError, match=r"model: the MODEL is not the UNet.*transformer_depth = \[0, 1\] \(the MODEL "
                                         r"has \[0, 2\]\).*adm_in_channels.*SD1.5 checkpoint"):
        xpsr(tiny.tiny_model("sdxl"), pos, neg, low, lr_image(64, 64))
    with pytest.raises(ValueError, match=r"image has shape \(1, 64, 64, 4\).*RGB"):
        xpsr(tiny.tiny_model("sd15"), pos, neg, low, torch.rand(1, 64, 64, 4))
    with pytest.raises(ValueError, match=r"low_level: its embedding is 32 wide"):
        xpsr(tiny.tiny_model("sd15"), pos, neg, [[torch.zeros(1, 77, 32), {}]], lr_image(64, 64))


def xpsr_prompt(controlnet: str, unet: str) -> dict:
    """The graph a user builds: XPSR's defaults (ddpm, ddim_uniform, CFG 5.5) at a tiny size."""
    text = lambda t: {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": t}}  # noqa: E731
    return {
        "ckpt": {"class_type": "CupscaleTinyCheckpointLoader", "inputs": {"kind": "sd15", "seed": 0}},
        "high": text("a boat on a lake, clean, high-resolution, 8k, high quality, clear text."),
        "neg": text("blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed."),
        "low": text("The image is blurry and noisy, with low clarity."),
        "lowneg": text("high resolution, best quality, clear"),
        "image": {"class_type": "EmptyImage",
                  "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0x808080}},
        "load": {"class_type": "SFAControlNetLoader", "inputs": {"controlnet": controlnet, "unet": unet}},
        "apply": {"class_type": "SFAControlNetApply", "inputs": {
            "model": ["ckpt", 0], "positive": ["high", 0], "negative": ["neg", 0], "low_level": ["low", 0],
            "sfa_controlnet": ["load", 0], "image": ["image", 0], "strength": 1.0, "start_percent": 0.0,
            "end_percent": 1.0, "low_level_negative": ["lowneg", 0]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["apply", 1], "negative": ["apply", 2], "latent_image": ["latent", 0],
            "seed": 1, "steps": 2, "cfg": 5.5, "sampler_name": "ddpm", "scheduler": "ddim_uniform", "denoise": 1.0}},
        "out": {"class_type": "CupscaleCapture", "inputs": {"value": ["sample", 0], "key": "latent"}},
    }


def test_a_bad_file_fails_its_prompt_and_the_host_runs_the_next(host, xpsr_dir):
    from harness.test_nodes import CAPTURED
    with pytest.raises(PromptError, match=r"SFAControlNetLoader.*plain_controlnet.bin is a standard SD ControlNet"):
        run_prompt(xpsr_prompt("plain_controlnet.bin", "xpsr_unet.safetensors"))
    CAPTURED.clear()
    run_prompt(xpsr_prompt("ckpt-st/controlnet/diffusion_pytorch_model.safetensors",
                           "ckpt-st/unet/diffusion_pytorch_model.safetensors"))
    latent = CAPTURED["latent"]["samples"]
    assert latent.shape == (1, 4, 16, 16) and torch.isfinite(latent).all()


def test_a_missing_file_is_named_under_its_own_input_alone(host, xpsr_dir):
    """The host lays a failed validate_inputs on every input it names: it names controlnet alone, and a
    missing unet file is refused naming unet: by the host's own dropdown check before the run where it checks V3
    dropdowns (v0.33), else by the node when the run starts."""
    import execution
    st = "ckpt-st/controlnet/diffusion_pytorch_model.safetensors"
    valid = asyncio.run(execution.validate_prompt("1", xpsr_prompt("missing.safetensors", st), None))
    details = [e.get("details", "") for e in valid[3]["load"]["errors"]]
    assert any("controlnet = 'missing.safetensors' not found in models/xpsr" in d for d in details), details
    assert not any(d.startswith("unet") for d in details), details  # was reported under unet too
    valid = asyncio.run(execution.validate_prompt("1", xpsr_prompt(st, "missing.safetensors"), None))
    if valid[0]:
        with pytest.raises(PromptError, match=r"unet = 'missing.safetensors' not found in models/xpsr"):
            run_prompt(xpsr_prompt(st, "missing.safetensors"))
    else:
        assert [e["extra_info"]["input_name"] for e in valid[3]["load"]["errors"]] == ["unet"], valid[3]
