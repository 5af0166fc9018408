"""Region prompts from a multimodal LLM: instructions, backends (local or endpoint), the REGION_PROMPTS type."""
