"""The joint-attention prior and DiT tile positions in the core alone (cupscale.priors.joint_attention,
cupscale.tiling.positions): the text share, the prior's identities, positions against the whole image's."""
from __future__ import annotations

import pytest
import torch

from cupscale.priors.items import ItemRegions
from cupscale.priors.joint_attention import (attention_with_text_share, capture_text, joint_prior_attention,
                                             read_text_prior, text_attention)
from cupscale.tiling.grid import region_grid
from cupscale.tiling.multidiffusion import TileBatch
from cupscale.tiling.positions import centred_shift, id_offsets, table_crops, tile_origins

pytestmark = pytest.mark.hostfree  # the core alone: scripts/test.sh --core runs it without a host

TEXT, HW, HEADS, D = 5, (4, 6), 2, 8


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def qkv(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = TEXT + HW[0] * HW[1]
    return [torch.randn(batch, HEADS, n, D, generator=g) for _ in range(3)]


def test_the_text_share_and_output_come_from_one_call_and_match_the_explicit_softmax():
    q, k, v = qkv()
    probs = torch.softmax(q @ k.transpose(-1, -2) * D ** -0.5, dim=-1)
    out, share = attention_with_text_share(sdpa, q, k, v, TEXT)
    assert torch.allclose(out, probs @ v, atol=1e-5)
    assert torch.allclose(share[..., 0], probs[..., :TEXT].sum(-1), atol=1e-5)


def test_the_joint_output_splits_into_text_and_image_parts_weighted_by_the_share():
    q, k, v = qkv()
    out, share = attention_with_text_share(sdpa, q, k, v, TEXT)
    o_txt = text_attention(q, k[:, :, :TEXT], v[:, :, :TEXT])
    o_img = sdpa(q, k[:, :, TEXT:], v[:, :, TEXT:])
    assert torch.allclose(out, share * o_txt + (1 - share) * o_img, atol=1e-5)


def test_the_prior_is_the_identity_when_it_reads_the_tiles_own_text_attention_and_at_weight_zero():
    q, k, v = qkv()
    own = text_attention(q[:, :, TEXT:], k[:, :, :TEXT], v[:, :, :TEXT])
    plain = sdpa(q, k, v)
    assert torch.allclose(joint_prior_attention(sdpa, q, k, v, TEXT, own, 1.0), plain, atol=1e-5)
    other = torch.randn_like(own)
    assert torch.allclose(joint_prior_attention(sdpa, q, k, v, TEXT, other, 0.0), plain, atol=1e-5)
    moved = joint_prior_attention(sdpa, q, k, v, TEXT, other, 1.0)
    assert torch.allclose(moved[:, :, :TEXT], plain[:, :, :TEXT], atol=1e-5)  # text queries keep theirs
    assert (moved[:, :, TEXT:] - plain[:, :, TEXT:]).abs().max() > 1e-2


def test_the_capture_read_over_the_whole_latent_is_the_capture_itself():
    q, k, v = qkv(batch=1)
    captured = capture_text(q, k, v, TEXT, HW)
    grid = region_grid(8, 12, 8, 12, 0)  # 2x2 patches: 8x12 cells are the 4x6 tokens
    read = read_text_prior(captured, ItemRegions(grid, (0,), (0,)), HW)
    assert torch.allclose(read, text_attention(q[:, :, TEXT:], k[:, :, :TEXT], v[:, :, :TEXT]), atol=1e-6)


def whole_ids(h: int, w: int, centred: bool) -> torch.Tensor:
    """RoPE ids of a whole h x w patch image as Flux (corner origin) or Qwen-Image (centred) make them."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if centred:
        rows, cols = rows - h // 2, cols - w // 2
    return torch.stack([torch.zeros_like(rows), rows, cols], -1).float()


def test_tile_ids_moved_to_their_origins_are_the_whole_images_ids_at_the_tile():
    grid = region_grid(40, 52, 16, 16, 4)  # latent cells; patches of 2
    batch = TileBatch(grid, tuple(range(len(grid))), chunks=2, images=1)
    origins = tile_origins(batch, 2)
    for centred in (False, True):
        shift = centred_shift((8, 8), (20, 26)) if centred else (0, 0)
        tile = whole_ids(8, 8, centred).reshape(1, 64, 3).expand(len(origins), -1, -1)
        moved = tile + id_offsets(origins, shift)
        whole = whole_ids(20, 26, centred)
        for item, (r, c) in enumerate(origins):
            assert torch.equal(moved[item].reshape(8, 8, 3), whole[r:r + 8, c:c + 8])


def test_id_offsets_move_rows_and_columns_alone_whatever_the_number_of_axes():
    """Flux.2's ids carry a fourth axis after the column: it is left as the tile has it."""
    offsets = id_offsets(((3, 5), (0, 2)), (1, -1), axes=4)
    assert offsets.shape == (2, 1, 4) and offsets[:, 0].tolist() == [[0, 4, 4, 0], [0, 1, 1, 0]]


def test_table_crops_are_the_whole_images_crop_at_each_tile_and_none_beyond_the_table():
    side, channels = 12, 3
    table = torch.randn(1, side * side, channels)
    origins = ((0, 0), (2, 4))
    crops = table_crops(table, (4, 4), (8, 10), origins)
    whole = table.reshape(side, side, channels)[2:10, 1:11]  # SD3's centred crop of 8x10
    for item, (r, c) in enumerate(origins):
        assert torch.equal(crops[item].reshape(4, 4, channels), whole[r:r + 4, c:c + 4])
    assert table_crops(table, (4, 4), (8, 14), origins) is None
