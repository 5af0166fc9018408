"""LIIF core (no host): the pack's rendering against LIIF's equations written out here, tiling,
and reading checkpoints in the official layouts."""
import pytest
import torch
import torch.nn.functional as F

import tiny_liif
from cupscale.errors import InputError
from cupscale.guards import check_not_empty
from cupscale.liif import model as liif
from cupscale.liif.checkpoints import CheckpointError, liif_from_checkpoint, load_implicit_decoder, load_liif

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host


def image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    """A ComfyUI IMAGE (1, h, w, 3) in 0..1."""
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def reference_edsr(sd: dict, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """EDSR-baseline without its tail, from the keys (EDSR Sec. 3.1)."""
    conv = lambda t, name: F.conv2d(t, sd[name + ".weight"], sd[name + ".bias"], padding=1)  # noqa: E731
    head = conv(x, "encoder.head.0")
    h = head
    for b in range(blocks):
        h = h + conv(F.relu(conv(h, f"encoder.body.{b}.body.0")), f"encoder.body.{b}.body.2")
    return head + conv(h, f"encoder.body.{blocks}")


def reference_liif(ckpt: dict, img: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """LIIF Eq. 2-5 in float64 for every output pixel: codes unfolded to 3x3 (Eq. 3), the nearest
    code centre at or below / above the query on each axis (clamped to the map, as the official
    code does), input [z*, (x_q - v*) * (h, w), cell * (h, w)] (Eq. 2, 5), and the four predictions
    blended with the area of the diagonally opposite rectangle (Eq. 4). Returns (out_h, out_w, 3)."""
    spec = ckpt["model"]
    sd = {k: v.double() for k, v in spec["sd"].items()}
    x = img.double().movedim(-1, 1) * 2 - 1
    feat = reference_edsr(sd, x, spec["args"]["encoder_spec"]["args"]["n_resblocks"])[0]
    c, h, w = feat.shape
    padded = F.pad(feat, (1, 1, 1, 1))
    z = torch.stack([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], 1).reshape(9 * c, h, w)
    yq = -1 + (2 * torch.arange(out_h, dtype=torch.float64) + 1) / out_h
    xq = -1 + (2 * torch.arange(out_w, dtype=torch.float64) + 1) / out_w
    vy = -1 + (2 * torch.arange(h, dtype=torch.float64) + 1) / h
    vx = -1 + (2 * torch.arange(w, dtype=torch.float64) + 1) / w
    below_y = (vy[None] <= yq[:, None]).sum(1)
    below_x = (vx[None] <= xq[:, None]).sum(1)
    sides_y = [(below_y - 1).clamp(0, h - 1), below_y.clamp(0, h - 1)]
    sides_x = [(below_x - 1).clamp(0, w - 1), below_x.clamp(0, w - 1)]
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("imnet.layers.")})
    preds, areas = [], []
    for iy in sides_y:
        for ix in sides_x:
            dy = ((yq - vy[iy]) * h)[:, None].expand(out_h, out_w)
            dx = ((xq - vx[ix]) * w)[None, :].expand(out_h, out_w)
            cell = torch.tensor([2 / out_h * h, 2 / out_w * w], dtype=torch.float64).expand(out_h, out_w, 2)
            t = torch.cat([z[:, iy][:, :, ix].permute(1, 2, 0), dy[..., None], dx[..., None], cell], -1)
            for n, i in enumerate(layers):
                t = F.linear(t, sd[f"imnet.layers.{i}.weight"], sd[f"imnet.layers.{i}.bias"])
                t = F.relu(t) if n < len(layers) - 1 else t
            preds.append(t)
            areas.append((dy * dx).abs() + 1e-9)
    total = sum(areas)
    return sum(p * (a / total)[..., None] for p, a in zip(preds, reversed(areas)))


@pytest.fixture(scope="module")
def ckpt():
    return tiny_liif.edsr_liif(seed=3)


@pytest.fixture(scope="module")
def model(ckpt):
    return liif_from_checkpoint(ckpt, "tiny-edsr-liif.pth")


@pytest.mark.parametrize("scale,size", [(1.7, None), (2.0, None), (3.3, None), (0.0, (23, 41))])
def test_render_equals_liif_equations(ckpt, model, scale, size):
    img = image(9, 14)
    out_hw = liif.output_size((9, 14), scale, *(size[::-1] if size else (0, 0)))
    with torch.no_grad():
        ours = liif.render(model, liif.to_signed(img), out_hw)[0]
    ref = reference_liif(ckpt, img, *out_hw)
    assert ours.shape == ref.shape == (*out_hw, 3)
    assert ref.std() > 0.05  # the comparison is not between two flat images
    assert (ours.double() - ref).abs().max() <= 1e-5


def test_checkpoint_file_is_read_with_weights_only_and_gives_the_same_model(ckpt, model, tmp_path):
    path = tmp_path / "edsr-baseline-liif.pth"
    torch.save(ckpt, path)
    loaded = load_liif(path)
    x = liif.to_signed(image(6, 7))
    with torch.no_grad():
        assert torch.equal(liif.render(loaded, x, (13, 10)), liif.render(model, x, (13, 10)))


def test_tiled_rendering_equals_untiled(model):
    x = liif.to_signed(image(40, 44, seed=5))
    calls = []
    with torch.no_grad():
        whole = liif.render(model, x, (100, 110), tile=1000)
        tiled = liif.render(model, x, (100, 110), tile=12, max_points=300,
                            on_progress=lambda done, total: calls.append((done, total)))
        no_margin = liif.render(model, x, (100, 110), tile=12, max_margin=0)
    assert len(liif.output_tiles((40, 44), (100, 110), 12, model.head)) == 16
    assert calls[-1][0] == calls[-1][1] > 16  # several chunks per tile
    assert (tiled - whole).abs().max() <= 1e-5
    assert (no_margin - whole).abs().max() > 1e-3  # the margin, not luck, makes the tiles exact


def test_progress_callback_can_interrupt(model):
    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop), torch.no_grad():
        liif.render(model, liif.to_signed(image(20, 20)), (60, 60), tile=8, on_progress=stop_after_two)


def test_rdn_liif_loads_from_official_keys_and_tiles_within_its_margin():
    model = liif_from_checkpoint(tiny_liif.rdn_liif(seed=2), "tiny-rdn-liif.pth")
    assert model.receptive_radius == 2 + 20 * 6 + 1
    x = liif.to_signed(image(12, 10))
    with torch.no_grad():
        whole = liif.render(model, x, (25, 19))
        tiled = liif.render(model, x, (25, 19), tile=4, max_margin=200)
    assert torch.isfinite(whole).all() and whole.std() > 0
    assert (tiled - whole).abs().max() <= 1e-5


def test_output_size_rules():
    assert liif.output_size((100, 200), 1.5) == (150, 300)
    assert liif.output_size((100, 200), 9.0, width=300) == (150, 300)
    assert liif.output_size((100, 200), 9.0, height=50) == (50, 100)
    assert liif.output_size((100, 200), 9.0, 517, 333) == (333, 517)
    for bad in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"scale_by = .*must be positive"):
            liif.output_size((100, 200), bad)
    with pytest.raises(ValueError, match=r"20000x10000 pixels, beyond the maximum of 16384"):
        liif.output_size((100, 200), 100.0)


def test_an_output_past_the_pixel_budget_is_refused_before_any_work(monkeypatch):
    monkeypatch.delenv(liif.OUTPUT_MEGAPIXELS_VAR, raising=False)
    liif.check_output_budget(1, (12288, 12288))  # the default admits one 12K square ...
    with pytest.raises(InputError) as refused:  # ... not a 16K one, nor two 12K ones
        liif.check_output_budget(1, (16384, 16384))
    message = refused.value.named({"size": "scale_by"})
    assert ("16384x16384 output of 1 image(s) is 268 megapixels (3.0 GiB as float32), past this server's limit of "
            "160: lower scale_by, or raise $CUPSCALE_MAX_OUTPUT_MEGAPIXELS where ComfyUI starts") in message
    with pytest.raises(InputError, match="302 megapixels"):
        liif.check_output_budget(2, (12288, 12288))
    monkeypatch.setenv(liif.OUTPUT_MEGAPIXELS_VAR, "300")
    liif.check_output_budget(1, (16384, 16384))
    monkeypatch.setenv(liif.OUTPUT_MEGAPIXELS_VAR, "0")  # no limit
    liif.check_output_budget(4, (16384, 16384))
    monkeypatch.setenv(liif.OUTPUT_MEGAPIXELS_VAR, "1")
    liif.check_output_budget(1, (1000, 1000))
    with pytest.raises(InputError, match="of 1: "):
        liif.check_output_budget(1, (1001, 1000))


def test_an_empty_batch_or_side_is_named():
    for shape in ((0, 8, 8, 3), (1, 0, 8, 3), (1, 8, 0, 3)):
        with pytest.raises(InputError) as empty:
            check_not_empty(torch.zeros(shape), "f")
        assert empty.value.named({"f": "image"}).startswith(f"image is empty (shape {shape}): give at least one")
    check_not_empty(torch.zeros(1, 1, 1, 3), "f")


def test_other_checkpoints_are_refused_with_what_they_are(tmp_path):
    esrgan = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"conv_first.weight": torch.zeros(64, 3, 3, 3), "body.0.rdb1.conv1.weight": torch.zeros(32, 64, 3, 3)},
               esrgan)
    with pytest.raises(CheckpointError, match=r"not a LIIF checkpoint: it looks like an ESRGAN-style upscale model"):
        load_liif(esrgan)
    vae = tmp_path / "sdxl_vae.safetensors"
    from safetensors.torch import save_file
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3),
               "post_quant_conv.weight": torch.zeros(4, 4, 1, 1)}, str(vae))
    with pytest.raises(CheckpointError, match=r"not an implicit latent decoder: it looks like a plain VAE.*'Load VAE'"):
        load_implicit_decoder(vae)
    with pytest.raises(CheckpointError, match=r"not a LIIF checkpoint: it looks like a plain VAE"):
        load_liif(vae)


def test_truncated_files_are_reported_as_damaged(ckpt, tmp_path):
    pth = tmp_path / "edsr-baseline-liif.pth"
    torch.save(ckpt, pth)
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"edsr-baseline-liif.pth could not be read .*damaged or incomplete"):
        load_liif(pth)
    from safetensors.torch import save_file
    st = tmp_path / "decoder.safetensors"
    save_file(tiny_liif.first_stage()["state_dict"], str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"decoder.safetensors could not be read .*damaged or incomplete"):
        load_implicit_decoder(st)


def test_missing_and_misshaped_keys_are_named_in_the_files_own_names(tmp_path):
    ckpt = tiny_liif.edsr_liif()
    del ckpt["model"]["sd"]["encoder.body.1.body.2.bias"]
    ckpt["model"]["sd"]["imnet.layers.2.weight"] = torch.zeros(16, 15)
    with pytest.raises(CheckpointError, match=r"1 missing: encoder.body.1.body.2.bias.*"
                                              r"1 wrong shape: imnet.layers.2.weight \(16, 15\) \(expected \(16, 16\)\)"):
        liif_from_checkpoint(ckpt, "broken.pth")
    stage = tiny_liif.first_stage()
    del stage["state_dict"]["decoder.decoder.1.mid.block_2.conv1.weight"]
    path = tmp_path / "first_stage.ckpt"
    torch.save(stage, path)
    with pytest.raises(CheckpointError, match=r"missing: decoder.decoder.1.mid.block_2.conv1.weight"):
        load_implicit_decoder(path)


def test_first_stage_checkpoint_layouts_load_the_same_decoder(tmp_path):
    stage = tiny_liif.first_stage(seed=4)
    lightning, wrapped = tmp_path / "lightning.ckpt", tmp_path / "model_sd.pth"
    torch.save(stage, lightning)
    torch.save({"model": {"sd": stage["state_dict"]}}, wrapped)
    a, b = load_implicit_decoder(lightning), load_implicit_decoder(wrapped)
    assert a.info.trunk.z_channels == 4 and a.info.trunk.level_channels == (32, 64) and a.info.hidden == (16, 16)
    assert not a.model.head.feat_unfold and a.model.head.cell_decode
    z = torch.randn(2, 4, 6, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = liif.render(a.model, z, (37, 50), tile=4)
        assert torch.equal(out, liif.render(b.model, z, (37, 50), tile=4))
        # the trunk sees the whole latent (GroupNorm, attention), so tiles only split the queries
        assert (out - liif.render(a.model, z, (37, 50), tile=1000)).abs().max() <= 1e-5
    assert out.shape == (2, 37, 50, 3)


class SkipInit:
    """Layers as ComfyUI's comfy.ops.disable_weight_init gives them: torch.nn's, without the random
    initialisation a checkpoint overwrites; ``made`` counts them."""

    made: list[str] = []

    class Conv2d(torch.nn.Conv2d):
        def reset_parameters(self):
            SkipInit.made.append("Conv2d")

    class Linear(torch.nn.Linear):
        def reset_parameters(self):
            SkipInit.made.append("Linear")

    class GroupNorm(torch.nn.GroupNorm):
        def reset_parameters(self):
            SkipInit.made.append("GroupNorm")


@pytest.mark.parametrize("kind", ["edsr", "rdn", "decoder"])
def test_every_layer_comes_from_the_operations_given_and_the_result_is_the_same(kind, tmp_path):
    path = tmp_path / f"{kind}.pth"
    torch.save({"edsr": tiny_liif.edsr_liif, "rdn": tiny_liif.rdn_liif, "decoder": tiny_liif.first_stage}[kind](), path)
    load = load_implicit_decoder if kind == "decoder" else load_liif
    SkipInit.made.clear()
    plain, given = load(path), load(path, SkipInit)
    plain, given = (m.model if kind == "decoder" else m for m in (plain, given))
    layers = [m for m in given.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm))]
    assert layers and len(SkipInit.made) == len(layers)
    assert all(type(m).__qualname__.startswith("SkipInit.") for m in layers)
    x = torch.randn(1, 4, 5, 6) if kind == "decoder" else liif.to_signed(image(5, 6))
    with torch.no_grad():
        assert torch.equal(liif.render(given, x, (11, 13)), liif.render(plain, x, (11, 13)))
