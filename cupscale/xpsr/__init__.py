"""XPSR: the Semantic-Fusion Attention ControlNet and the UNet's Conditional Attention, and its checkpoints."""
