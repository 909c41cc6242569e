"""The embedded offline engine: ttskit's weights (verified, converted once) in our own batched Tacotron2 + MelGAN.

engine.py (EmbeddedEngine), tacotron.py and melgan.py (the models), weights.py (finding and converting the weights),
frontend.py (text -> phkit symbol ids).
"""
