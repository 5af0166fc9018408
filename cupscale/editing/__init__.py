"""Editing: RePaint's zigzag resampling and CLIP reranking of candidates (Multi-Stage Blended Diffusion)."""
