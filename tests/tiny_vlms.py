"""Tiny random-initialised vision-language models saved as a user's model folder would be.

Each builder writes config, weights, tokenizer, image processor and chat template with
``save_pretrained``, so the captioner loads them exactly as it loads a downloaded model; no hub access.
Random weights produce gibberish: tests assert structure, never wording.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = "a the sky tree stone wall grass water cloud red green blue sharp blurry noisy bright dark".split()
UNK, PAD, BOS, EOS = "[UNK]", "[PAD]", "<s>", "</s>"


def word_tokenizer(special: list[str], chat_template: str) -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer with the model's special tokens and a chat template."""
    vocab = {tok: i for i, tok in enumerate([UNK, PAD, BOS, EOS, *special, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=UNK, pad_token=PAD, bos_token=BOS,
                                        eos_token=EOS, additional_special_tokens=special)
    tokenizer.chat_template = chat_template
    return tokenizer


def save(folder: Path, model, processor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    " {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def llava(folder: Path, seed: int = 0) -> Path:
    """LLaVA-1.5-like: a CLIP vision tower, an MLP projector and a Llama decoder, 28x28 crops."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tokenizer = word_tokenizer(["<image>"], LLAVA_TEMPLATE)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_index=image_token, vision_feature_layer=-1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return save(folder, model, processor)


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """Qwen2-VL-like: a windowless ViT with 2x2 patch merging and an M-RoPE Qwen2 decoder."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)
    tokenizer = word_tokenizer(QWEN_SPECIAL, QWEN_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 512,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": tokenizer.pad_token_id},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE)
    return save(folder, model, processor)


def text_only(folder: Path, seed: int = 0) -> Path:
    """A plain Llama language model folder: what a user might pick by mistake."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = word_tokenizer([], LLAVA_TEMPLATE)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    return save(folder, model, tokenizer)


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
IDEFICS3_SPECIAL = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]


def idefics3(folder: Path, seed: int = 0) -> Path:
    """Idefics3/SmolVLM-like: a SigLIP tower, pixel-shuffle connector and a Llama decoder, no image splitting."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor
    tokenizer = word_tokenizer(IDEFICS3_SPECIAL, IDEFICS3_TEMPLATE)
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": end},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 28},
                                             max_image_size={"longest_edge": 28})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1,
                                  chat_template=IDEFICS3_TEMPLATE)
    return save(folder, model, processor)


QWEN3VL_TINY_VISION = dict(hidden_size=32, intermediate_size=64, depth=2, deepstack_visual_indexes=[0], num_heads=2,
                           num_position_embeddings=64)
"""The vision tower of the tiny Qwen3-VL text encoder: one DeepStack layer (the key ComfyUI detects it by)."""


def tiny_qwen3vl_config():
    """The host's Qwen3-VL 8B language-model config at 32 wide, 2 layers (the real tokenizer's vocabulary)."""
    from dataclasses import dataclass

    from comfy.text_encoders.llama import Qwen3VL_8BConfig

    @dataclass
    class TinyQwen3VLConfig(Qwen3VL_8BConfig):
        hidden_size: int = 32
        intermediate_size: int = 64
        num_hidden_layers: int = 2
        num_attention_heads: int = 2
        num_key_value_heads: int = 1
        head_dim = 16
        rope_dims = [4, 2, 2]  # the multimodal rotary sections: half of head_dim
    return TinyQwen3VLConfig


def shrink_host_qwen3vl(monkeypatch) -> None:
    """While the test lasts, the host builds its Qwen3-VL 8B text encoder at the tiny sizes: ComfyUI sizes it by
    its model type (comfy.text_encoders.qwen3vl's tables), not by the file, so Load CLIP reads the tiny file."""
    import comfy.text_encoders.qwen3vl as qwen3vl
    monkeypatch.setitem(qwen3vl.QWEN3VL_CONFIGS, "qwen3vl_8b", tiny_qwen3vl_config())
    monkeypatch.setitem(qwen3vl.QWEN3VL_VISION, "qwen3vl_8b", QWEN3VL_TINY_VISION)


def host_qwen3vl(file: Path, seed: int = 0) -> Path:
    """A tiny seeded Qwen3-VL text encoder saved as a user's models/text_encoders file: the host's own module
    (built while :func:`shrink_host_qwen3vl` holds), its language model under ``model.``, its vision tower under
    ``model.visual.`` as Qwen3-VL releases are laid out."""
    import comfy.ops
    import comfy.text_encoders.qwen3vl as qwen3vl
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = qwen3vl._make_qwen3vl_model("qwen3vl_8b")({}, torch.float32, "cpu", comfy.ops.manual_cast)
    state = {}
    for name, tensor in model.state_dict().items():
        value = torch.ones(tensor.shape) if "norm" in name and tensor.ndim == 1 else torch.randn(tensor.shape) * 0.02
        state[("model." + name) if name.startswith("visual.") else name] = value.contiguous()
    # Its own output head (as the 8B has): tied to the embeddings, a random model repeats the prompt's last token
    # (a newline). Zero rows for the special tokens (151643 on) keep greedy answers to words, not to the
    # end-of-text or template tokens that decode to nothing.
    state["model.lm_head.weight"][151643:] = 0
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(file))
    return file
