"""The embedded offline engine's weights and modules (Tacotron2-style acoustic model + MelGAN)."""
