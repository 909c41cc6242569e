"""The embedded offline engine: ttskit's multi-speaker Tacotron2 + MelGAN weights in our own batched modules."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from app.engines.embedded.melgan import MelGAN
from app.engines.embedded.tacotron import PRENET_DROPOUT, Acoustic, AcousticConfig, max_frames, speaker_vector
from app.engines.embedded.weights import load_weights
from app.engines.base import NEUTRAL, Utterance, resolve_device

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050  # Hz, the rate the acoustic model's mels and the vocoder were trained at
# Ordered by an independent ASR check of each voice (character error rate, see DESIGN.md): best first.
GOOD_SPEAKERS = ("Aijia", "Aina", "Aiwei", "Aiyu", "Xiaobei", "Xiaoxue", "Aicheng", "Aijing", "Aixia", "Aiyue")
FAIR_SPEAKERS = ("Aiqi", "biaobei", "Xiaomeng", "Xiaoyun", "Aibao", "Aiya", "Aitong", "Siyue", "Aimei", "Aida")
EXPERIMENTAL_SPEAKERS = ("Xiaomei", "Xiaogang", "Yina")  # 30-240% CER: often unintelligible or looping
DEFAULT_SPEAKER = GOOD_SPEAKERS[0]
# phkit symbol ids that make sound: phones, tones and letters (0-2 are pad/end/separator, 128+ punctuation).
_SPOKEN_IDS = frozenset(range(3, 128)) | {138, 139}
CUDA_VOCODER_ROWS = 32  # vocoder windows per call on CUDA (on CPU one at a time measured fastest: ~0.05 RTF)
CUDA_GATE_CHECK_EVERY = 8  # decoder steps between stop checks on CUDA (each check syncs the GPU)


@functools.lru_cache(maxsize=4096)  # repeated sentences (warm-up, examples, retries) skip the frontend
def _text_to_ids(text: str) -> tuple[int, ...]:
    """phkit's frontend: pinyin with tone sandhi -> its 145-symbol ids."""
    from phkit.chinese import text_to_sequence  # imported lazily: ~1.5 s of dictionaries

    return tuple(text_to_sequence(text, cleaner_names="hanzi"))


class EmbeddedEngine:
    """Multi-speaker Chinese Tacotron2 (22.05 kHz), batched with exact per-item masking; no emotions."""

    name = "embedded"
    sample_rate = SAMPLE_RATE
    speakers = GOOD_SPEAKERS + FAIR_SPEAKERS + EXPERIMENTAL_SPEAKERS
    experimental_speakers = frozenset(EXPERIMENTAL_SPEAKERS)
    emotions = (NEUTRAL,)  # this model was trained without emotion labels
    default_speaker = DEFAULT_SPEAKER
    max_batch_size = 64

    def __init__(self, cache_dir: str | None = None, frontend: Callable[[str], Sequence[int]] | None = None) -> None:
        self._cache_dir = cache_dir
        self._frontend = frontend or _text_to_ids  # text -> phkit symbol ids; injectable for offline benchmarks
        self._acoustic: Acoustic | None = None
        self._vocoder: MelGAN | None = None
        self._device = "cpu"
        self._fp16 = False
        self.note: str | None = None  # a visible remark, e.g. why FP16 is not in force
        self._lock = threading.Lock()  # one batch at a time; the batcher's single worker never contends

    @property
    def device(self) -> str:
        return self._device

    @property
    def fp16_supported(self) -> bool:
        return self._device.startswith("cuda")

    @property
    def precision(self) -> str:
        return "fp16 (vocoder fp32)" if self._fp16 else "fp32"

    @property
    def loaded(self) -> bool:
        return self._acoustic is not None

    def load(self, device: str = "auto", fp16: bool = True) -> None:
        """Load (converting on first use) the weights onto device and warm the text frontend."""
        self._device = resolve_device(device)
        if self._device.startswith("cuda"):
            # FP32 means FP32: with TF32 convolutions/LSTMs (cuDNN's default) batch 8 differed from batch 1 by 7e-2
            # in the mel on an H200, against ~3e-3 without. FP16 is the fast mode here. Process-wide by necessity.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        weights = load_weights(self._cache_dir)
        acoustic = Acoustic(AcousticConfig.from_hparams(weights.hparams))
        acoustic.load_ttskit_state(weights.acoustic)
        vocoder = MelGAN()
        vocoder.load_ttskit_state(weights.vocoder)
        self._acoustic = acoustic.eval().to(self._device)
        self._vocoder = vocoder.eval().to(self._device)  # MelGAN overflows in FP16 (activations ~6e3): kept FP32
        with contextlib.redirect_stderr(io.StringIO()):  # phkit loads its dictionaries on first call, with progress bars
            self._frontend("预热")
        logging.getLogger("jieba").setLevel(logging.WARNING)  # phkit's segmenter sets itself to DEBUG on import
        self.set_precision(fp16)

    def set_precision(self, fp16: bool) -> str:
        """Cast the acoustic model in place; FP16 without CUDA stays FP32 with a warning."""
        if fp16 and not self.fp16_supported:
            self.note = f"FP16 needs CUDA; running FP32 on {self._device}"
            warnings.warn(self.note, RuntimeWarning, stacklevel=2)
            fp16 = False
        elif not fp16 or self.fp16_supported:
            self.note = None
        self._fp16 = fp16
        if self._acoustic is not None:
            self._acoustic.to(torch.float16 if fp16 else torch.float32)
        return self.precision

    def speakable(self, text: str) -> bool:
        return any(i in _SPOKEN_IDS for i in self._frontend(text))

    def symbol_ids(self, text: str) -> list[int]:
        """phkit ids for one sentence (145-symbol table, ends with end and pad symbols)."""
        return self._frontend(text)

    def _dropout_stream(self, seed: int, steps: int) -> torch.Tensor:
        """This item's prenet dropout masks for every step, from its own generator: (steps, 2, prenet_dim)."""
        gen = torch.Generator().manual_seed(seed)
        keep = torch.rand(steps, 2, self._acoustic.cfg.prenet_dim, generator=gen) >= PRENET_DROPOUT
        return keep.float() / (1 - PRENET_DROPOUT)

    def synthesize_mels(self, batch: Sequence[Utterance]) -> tuple[list[torch.Tensor], list[bool]]:
        """Run the acoustic model on a batch: one (80, frames) FP32 mel per item, and whether its gate fired."""
        ids = [self.symbol_ids(u.text) for u in batch]
        limits = [max_frames(len(i)) for i in ids]
        steps = max(limits)
        dtype = self._acoustic.embedding.weight.dtype
        padded = torch.zeros(len(batch), max(map(len, ids)), dtype=torch.long)
        dropout = torch.zeros(len(batch), steps, 2, self._acoustic.cfg.prenet_dim)
        for b, (seq, u) in enumerate(zip(ids, batch)):
            padded[b, : len(seq)] = torch.tensor(seq)
            dropout[b, : limits[b]] = self._dropout_stream(u.seed, limits[b])
        speakers = torch.tensor([speaker_vector(u.speaker) for u in batch], dtype=dtype)
        mel, frames, stopped = self._acoustic.infer(
            padded.to(self._device), torch.tensor(list(map(len, ids)), device=self._device), speakers.to(self._device),
            dropout.to(self._device, dtype), limits, check_every=CUDA_GATE_CHECK_EVERY if self.fp16_supported else 1,
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
            rows = CUDA_VOCODER_ROWS if self._device.startswith("cuda") else 1  # CPU: small working set is fastest
            return [a.float().cpu().numpy() for a in self._vocoder.vocode_many(mels, max_rows=rows)]

    def unload(self) -> None:
        """Drop both models and return their memory."""
        self._acoustic = self._vocoder = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
