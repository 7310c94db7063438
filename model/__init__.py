"""The reference-guided coarse-to-fine inpainting GAN (DeepFill v2 gated convolutions)."""
