"""The embedded offline engine: ttskit's multi-speaker Tacotron2 + MelGAN weights in our own batched modules."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from app import spans
from app.engines import precision
from app.engines.base import EMOTIONS_RULES, WARMUP_TEXT, EngineBase, Utterance
from app.engines.embedded.dropout import item_keys
from app.engines.embedded.frontend import SPOKEN_IDS, Frontend, text_to_ids, warm_phkit
from app.engines.embedded.melgan import HOP_LENGTH, MelGAN
from app.engines.embedded.static_decoder import StaticTacotronDecoder
from app.engines.embedded.tacotron import Tacotron, TacotronConfig, max_frames, speaker_vector
from app.engines.embedded.weights import default_cache_dir, load_weights
from app.engines.self_check import Decoded
from app.prosody import RULE_EMOTIONS

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050  # Hz, the rate the acoustic model's mels and the vocoder were trained at
# Ordered by independent checks of our own output, intelligibility first, naturalness second (six sentences per voice,
# CPU; whisper-base character error rate, NISQA-TTS naturalness; figures in README.md). Good: at most one character
# wrong in six sentences (CER <= 0.013, the same word most voices were misheard on), by naturalness, best first.
GOOD_SPEAKERS = ("biaobei", "Aiqi", "Aina", "Aixia", "Aijia", "Aiya", "Aijing", "Aimei", "Aida", "Aiyue", "Aicheng", "Aiyu",
                 "Xiaoxue", "Aiwei", "Aitong")
FAIR_SPEAKERS = ("Xiaobei", "Xiaoyun", "Aibao", "Siyue", "Xiaomeng")  # CER 0.03-0.05 (Xiaomeng 0.16), by naturalness
EXPERIMENTAL_SPEAKERS = ("Xiaomei", "Xiaogang", "Yina")  # CER 0.43-0.66: often unintelligible or cut short
CUDA_VOCODER_ROWS = 32  # vocoder windows per call on CUDA (on CPU one at a time measured fastest: ~0.05 RTF)
# Vocoder windows per call on a CPU, per runtime. Measured (2 cores, 148-frame windows, ms per window at 1/4/8/32
# windows per call): torch 96/141/231/321, ONNX Runtime 83/92/102/106: one at a time is fastest for both.
CPU_VOCODER_ROWS = {"torch": 1, "onnxruntime": 1}
CUDA_GATE_CHECK_EVERY = 8  # decoder steps between stop checks on CUDA (each check syncs the GPU)
# What "FP16 on" runs per module. MelGAN overflows in FP16 (activations ~6e3), so the vocoder stays FP32 until the
# GPU suite's precision table shows BF16 (same range as FP32) fast and right there; flip it here when it does.
HALF_PRECISION = {"acoustic": "fp16", "vocoder": "fp32"}
# The GPU self-check decodes the warm-up sentence in these voices, seeds 0-3, as one batch: four items fill batch
# bucket 4 exactly, so replay and dynamic loop start from the same shapes.
SELF_CHECK_SPEAKERS = ("biaobei", "Aijia", "Xiaoxue", "Aina")


class EmbeddedEngine(EngineBase):
    """Multi-speaker Chinese Tacotron2 (22.05 kHz), batched with exact per-item masking.

    The checkpoint has no style tokens, so it has no trained emotions: every voice offers Sambert's emotion names,
    rendered by prosody rules after the model (app.prosody), and the model itself always speaks neutral.
    """

    name = "embedded"
    max_batch_size = 64
    cuda_graphs_capable = True
    emotion_kind = EMOTIONS_RULES
    half_modules = ("acoustic", "vocoder")
    onnx_parts = ("vocoder",)

    def __init__(self, cache_dir: str | None = None, frontend: Frontend | None = None) -> None:
        super().__init__()
        self.sample_rate = SAMPLE_RATE
        self.speakers = GOOD_SPEAKERS + FAIR_SPEAKERS + EXPERIMENTAL_SPEAKERS
        self.experimental_speakers = frozenset(EXPERIMENTAL_SPEAKERS)
        self.default_speaker = GOOD_SPEAKERS[0]
        self.emotions = RULE_EMOTIONS
        self._cache_dir = cache_dir
        self._frontend = frontend or text_to_ids  # injectable: ids exported beforehand, on a machine without phkit
        self._acoustic: Tacotron | None = None
        self._vocoder: MelGAN | None = None
        self._static: StaticTacotronDecoder | None = None  # the static-shape decoder, when in use
        self._vocoder_ort = None  # app.engines.onnx_runtime.OrtPart running the vocoder, when that runtime is in force
        self.half_precision = dict(HALF_PRECISION)
        # what the GPU self-check decodes: the warm-up sentence in SELF_CHECK_SPEAKERS, seeds 0-3, as one batch
        self.self_check_utterances = [Utterance(WARMUP_TEXT, s, seed=i) for i, s in enumerate(SELF_CHECK_SPEAKERS)]
        self._lock = threading.Lock()  # one batch at a time; the batcher's single worker never contends

    @property
    def loaded(self) -> bool:
        return self._acoustic is not None

    def _load_model(self) -> None:
        """Load (converting on first use) the weights onto the device and warm the text frontend."""
        if self.device.startswith("cuda"):
            # FP32 means FP32: with TF32 convolutions/LSTMs (cuDNN's default) batch 8 differed from batch 1 by 7e-2
            # in the mel on an H200, against ~3e-3 without. FP16 is the fast mode here. Process-wide by necessity.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        weights = load_weights(self._cache_dir)
        acoustic = Tacotron(TacotronConfig.from_hparams(weights.hparams))
        acoustic.load_ttskit_state(weights.acoustic)
        vocoder = MelGAN()
        vocoder.load_ttskit_state(weights.vocoder)
        self._acoustic = acoustic.eval().to(self.device)
        self._vocoder = vocoder.eval().to(self.device)
        if self._frontend is text_to_ids:
            warm_phkit()

    @property
    def fp16_label(self) -> str:
        return precision.label(self.half_table(True))

    def set_half_precision(self, acoustic: str, vocoder: str) -> str:
        """Choose what FP16-on runs per module (fp16, bf16 or fp32; the GPU suite measures each); recasts if in force."""
        self.half_precision = precision.check_table({"acoustic": acoustic, "vocoder": vocoder}, ("acoustic", "vocoder"))
        return self.set_precision(self.fp16)

    def _cast(self, fp16: bool) -> None:
        with self._lock:
            table = self.half_table(fp16)
            precision.cast(self._acoustic, precision.DTYPES[table["acoustic"]])
            precision.cast(self._vocoder, precision.DTYPES[table["vocoder"]])

    def _release(self) -> None:
        self._acoustic = self._vocoder = None

    def _use_onnx(self, progress) -> str:
        from app.engines.onnx_runtime import OrtPart

        folder = Path(self.onnx_dir or Path(self._cache_dir or default_cache_dir()) / "onnx")  # beside the converted weights
        part = OrtPart.build(self._vocoder, "embedded-melgan", folder, HOP_LENGTH, self._vocoder.pre.in_channels,
                             progress=progress)
        with self._lock:
            self._vocoder_ort = part
        return f"vocoder: {part.describe()}"

    def _drop_onnx(self) -> None:
        with self._lock:
            self._vocoder_ort = None

    def _vocode(self, mels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every (80, frames) mel through the vocoder in force (torch, or ONNX Runtime), in equal-length windows."""
        if self.device.startswith("cuda"):
            rows = CUDA_VOCODER_ROWS
        else:
            rows = CPU_VOCODER_ROWS["onnxruntime" if self._vocoder_ort is not None else "torch"]
        dtype = self._vocoder.pre.weight.dtype
        return self._vocoder.vocode_many([m.to(dtype) for m in mels], max_rows=rows, run=self._vocoder_ort)

    def set_static_decoding(self, on: bool, compile_step: bool = False) -> None:
        """Decode with the static-shape decoder (its chunks captured as CUDA graphs on CUDA) or the dynamic loop.

        Off CUDA the static path runs eagerly: tests compare it with the dynamic loop, benchmarks time it (optionally
        through torch.compile). On CUDA use set_cuda_graphs, which also says what is in force.
        """
        with self._lock:
            self._static = None  # free the old buffers and graphs before building new ones
            if on:
                self._static = StaticTacotronDecoder(self._acoustic, self.device, self.max_batch_size, compile_step=compile_step)

    def _capture_graphs(self) -> None:
        self.set_static_decoding(True)

    def _release_graphs(self) -> None:
        if self._acoustic is not None:
            self.set_static_decoding(False)

    def _graphs_description(self) -> str:
        return self._static.describe() if self._static is not None else ""

    def _graph_sets(self) -> list:
        return [self._static.graphs] if self._static is not None else []

    def _check_decode(self, dynamic: bool) -> list[Decoded]:
        with self._lock, torch.inference_mode():
            replays = self._static.graphs.replays if self._static is not None else 0
            mels, stopped = self.synthesize_mels(self.self_check_utterances, dynamic=dynamic)
            if not dynamic and (self._static is None or self._static.graphs.replays == replays):
                raise RuntimeError("the static decoder did not take the self-check batch (no bucket or another dtype)")
        return [Decoded(m.T.cpu().numpy(), s) for m, s in zip(mels, stopped)]

    def _check_vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock, torch.inference_mode():
            return [a.float().cpu().numpy() for a in self._vocode([torch.from_numpy(m.T.copy()).to(self.device) for m in mels])]

    def speakable(self, text: str) -> bool:
        return any(i in SPOKEN_IDS for i in self._frontend(text))

    def symbol_ids(self, text: str) -> Sequence[int]:
        """phkit ids for one sentence (145-symbol table, ends with end and pad symbols)."""
        return self._frontend(text)

    def synthesize_mels(self, batch: Sequence[Utterance], dynamic: bool = False) -> tuple[list[torch.Tensor], list[bool]]:
        """Run the acoustic model on a batch: one (80, frames) FP32 mel per item, and whether its gate fired.

        dynamic: decode with the dynamic loop even when the static decoder is in force (the self-check's reference)."""
        spans.mark("frontend")
        ids = [self.symbol_ids(u.text) for u in batch]
        spans.mark("encoder")  # inputs and dropout streams to tensors, then the text encoder (Tacotron.infer)
        limits = [max_frames(len(i)) for i in ids]
        dtype = self._acoustic.embedding.weight.dtype
        padded = torch.zeros(len(batch), max(map(len, ids)), dtype=torch.long)
        for b, seq in enumerate(ids):
            padded[b, : len(seq)] = torch.tensor(seq)
        speakers = torch.tensor([speaker_vector(u.speaker) for u in batch], dtype=dtype)
        mel, frames, stopped = self._acoustic.infer(  # each item's dropout masks are made on the device from its seed
            padded.to(self.device), torch.tensor(list(map(len, ids)), device=self.device), speakers.to(self.device),
            item_keys([u.seed for u in batch], self.device), limits,
            check_every=CUDA_GATE_CHECK_EVERY if self.fp16_supported else 1,
            static=None if dynamic else self._static,
        )
        for u, ok in zip(batch, stopped):
            if not ok:
                log.warning("decoder hit its length guard for %r (speaker %s)", u.text, u.speaker)
        return [mel[b, :, :n].float() for b, n in enumerate(frames)], stopped

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Batched acoustic model, then the vocoder on equal-length windows of all items at once."""
        if self._acoustic is None:
            raise RuntimeError("EmbeddedEngine.synthesize called before load()")
        with self._lock, torch.inference_mode():
            mels, _ = self.synthesize_mels(batch)
            spans.mark("vocoder")  # ends with the audio's copy to the host: the batch's one final sync
            return [a.float().cpu().numpy() for a in self._vocode(mels)]
