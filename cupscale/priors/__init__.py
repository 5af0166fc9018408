"""C-Upscale's priors: the Global Structure Prior, the captured Regional Attention Prior, the Attention
Composer, and the attention processors that apply them layer by layer."""
