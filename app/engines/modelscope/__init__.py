"""ModelScope's official Sambert-HifiGan pipeline behind the engine contract: the fidelity reference.

engine.py (ModelScopeEngine), deps.py (what this interpreter lacks, and the exact fix), emotion.py (how the chosen
emotion reaches the acoustic model through the frontend's symbols).
"""
