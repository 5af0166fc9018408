"""Plain-torch core of comfyui-cupscale: the papers' ideas as small functions over tensors.

Nothing here imports ComfyUI; the node classes in ``nodes/`` are thin shells over these modules.
"""
