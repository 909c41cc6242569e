"""Native Sambert-HifiGan runtime: loads ModelScope model folders, batches, runs FP16 (no kantts, no ttsfrd).

Importing this package pulls in only torch, numpy and pyyaml; the text frontend (jieba, pypinyin) is
imported lazily by `app.engines.sambert.frontend`.
"""
