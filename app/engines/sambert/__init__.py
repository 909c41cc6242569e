"""ModelScope Sambert-HifiGan model folders: the folder reader and hub download both Sambert engines share, and our
native runtime for them (batched, FP16; no kantts, no ttsfrd).

engine.py (SambertEngine), folder.py (reading a folder), hub.py (a hub id -> a local folder), runtime.py (one voice on
a device), acoustic.py / decoder.py / layers.py / vocoder.py (the models), config.py, symbols.py, frontend.py and
pinyin.py (text -> KAN-TTS symbols). Importing the package pulls in only torch, numpy and pyyaml; the frontend imports
jieba and pypinyin lazily.
"""
