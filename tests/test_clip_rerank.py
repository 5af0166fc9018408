"""CLIPRerank: the crop around the mask, the ranking, CLIP's scores, and the node in the host."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_clip
from cupscale.editing.rerank import best_k, clip_scores, mask_square


def test_mask_square_is_the_smallest_square_around_the_mask_moved_inside_the_image():
    mask = torch.zeros(1, 40, 60)
    mask[0, 10:14, 20:30] = 1  # 4 x 10: a 10 x 10 square centred on it
    assert mask_square(mask, 40, 60) == (7, 20, 10, 10)
    edge = torch.zeros(40, 60)
    edge[0:2, 55:60] = 1  # at the corner: the square is pushed back inside
    assert mask_square(edge, 40, 60) == (0, 55, 5, 5)
    tall = torch.zeros(20, 60)
    tall[:, 5:8] = 1  # a 20 x 3 strip: a 20 x 20 square, pushed right to stay inside
    assert mask_square(tall, 20, 60) == (0, 0, 20, 20)


def test_mask_square_errors_name_the_mask_and_the_fix():
    with pytest.raises(ValueError, match=r"mask is 8x8 pixels but the candidates are 16x16"):
        mask_square(torch.ones(8, 8), 16, 16)
    with pytest.raises(ValueError, match=r"mask is empty: give the mask of the edited area"):
        mask_square(torch.zeros(16, 16), 16, 16)


def test_best_k_orders_by_score_and_keeps_batch_order_on_ties():
    ranking = best_k(torch.tensor([0.1, 0.7, 0.3, 0.7]), 3)
    assert ranking.indices == (1, 3, 2)
    assert ranking.scores == pytest.approx((0.7, 0.7, 0.3))
    with pytest.raises(ValueError, match=r"keep = 5: choose between 1 and the number of candidates \(4\)"):
        best_k(torch.zeros(4), 5)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip.tiny_clip(tmp_path_factory.mktemp("clip_rerank") / "tiny-clip")


@pytest.fixture(scope="module")
def clip(clip_dir):
    from transformers import CLIPModel, CLIPProcessor
    return CLIPModel.from_pretrained(str(clip_dir)).eval(), CLIPProcessor.from_pretrained(str(clip_dir))


def candidates(n=4, h=40, w=56, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def reference_scores(model, processor, images: torch.Tensor, text: str) -> torch.Tensor:
    """CLIP's definition, image by image: cosine of the projected embeddings times exp(logit_scale)."""
    def projected(features):  # transformers 5 returns the projection as pooler_output, 4 as a tensor
        return features if torch.is_tensor(features) else features.pooler_output

    with torch.no_grad():
        t = projected(model.get_text_features(**processor(text=[text], return_tensors="pt", padding=True)))
        scores = []
        for image in images:
            pil = Image.fromarray((image.numpy() * 255).round().astype(np.uint8))
            v = projected(model.get_image_features(**processor(images=[pil], return_tensors="pt")))
            scores.append(torch.nn.functional.cosine_similarity(v, t).item() * model.logit_scale.exp().item())
    return torch.tensor(scores)


def test_scores_are_clips_image_text_similarity(clip):
    model, processor = clip
    images = candidates()
    scores = clip_scores(model, processor, images, "a red apple on a table")
    assert scores.shape == (4,)
    assert torch.allclose(scores, reference_scores(model, processor, images, "a red apple on a table"), atol=1e-4)
    assert len(set(scores.tolist())) == 4  # random candidates do differ


def test_with_a_mask_each_candidate_is_scored_on_the_square_around_it(clip):
    model, processor = clip
    images = candidates()
    mask = torch.zeros(1, 40, 56)
    mask[0, 12:20, 30:50] = 1
    top, left, sy, sx = mask_square(mask, 40, 56)
    masked = clip_scores(model, processor, images, "a door", mask=mask)
    cropped = clip_scores(model, processor, images[:, top:top + sy, left:left + sx], "a door")
    assert torch.allclose(masked, cropped) and not torch.allclose(masked, clip_scores(model, processor, images, "a door"))


def test_empty_or_oversized_text_is_refused(clip):
    with pytest.raises(ValueError, match=r"text is empty: give the prompt"):
        clip_scores(*clip, candidates(), "  ")
    with pytest.raises(ValueError, match=r"text holds 70,000 characters, more than the 16,000"):
        clip_scores(*clip, candidates(), "a door " * 10_000)


@pytest.fixture
def models_folder(host, clip_dir):
    import folder_paths
    folder_paths.add_model_folder_path("clip_rerank", str(clip_dir.parent))
    return clip_dir


def test_node_returns_the_best_images_best_first_with_every_score(models_folder, pack_node, clip):
    images = candidates(5)
    best, ranking = pack_node("CLIPRerank").execute(images, "tiny-clip", "a red apple", 2)
    expected = clip_scores(*clip, images, "a red apple")
    order = sorted(range(5), key=lambda i: -expected[i])
    assert [r["index"] for r in json.loads(ranking)] == order
    assert [r["score"] for r in json.loads(ranking)] == pytest.approx([expected[i].item() for i in order], abs=1e-3)
    assert torch.equal(best, images[order[:2]])


def test_model_folders_in_models_clip_rerank_are_the_choices(models_folder, host):
    choices = host.NODE_CLASS_MAPPINGS["CLIPRerank"].INPUT_TYPES()["required"]["clip_model"][1]["options"]
    assert "tiny-clip" in choices


def test_node_errors_name_the_input_and_the_fix(models_folder, pack_node):
    node = pack_node("CLIPRerank")
    with pytest.raises(ValueError, match=r"keep = 3 but images holds 2 candidates: lower keep"):
        node.execute(candidates(2), "tiny-clip", "a cat", 3)
    with pytest.raises(ValueError, match=r"clip_model = 'nope': no such model folder in .*hf download "
                                         r"openai/clip-vit-large-patch14"):
        node.execute(candidates(2), "nope", "a cat", 1)
