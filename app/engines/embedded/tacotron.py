"""Tacotron2-style acoustic model (text ids + speaker vector -> 80-band log-mel), with masked batched decoding.

Our own modules for the weights ttskit ships. Batching is exact by construction: every item sees zeros beyond
its own end in each convolution, its own attention key mask, its own packed LSTM, its own dropout masks (a hash of
its seed, step and unit: app/engines/embedded/dropout.py) and its own stop gate, so an item's mel does not depend on
which batch it ran in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from app import spans
from app.engines.embedded.dropout import prenet_masks, unit_offsets

N_MELS = 80  # mel bands per frame
PRENET_DROPOUT = 0.5  # ttskit keeps prenet dropout on at inference: that is how the model was trained to sound
GATE_THRESHOLD = 0.5  # an item stops at the first frame whose stop probability exceeds this
FRAMES_PER_SYMBOL_LIMIT = 8  # decoder guard: at most this many frames per input symbol (+ FRAMES_LIMIT_SLACK)
FRAMES_LIMIT_SLACK = 40
MAX_DECODER_STEPS = 2000  # absolute cap, about 23 s of audio at 22050 Hz / hop 256
MASK_BLOCK_STEPS = 16  # the dynamic loop makes dropout masks for this many steps at a time (a few kernels per block)


def speaker_vector(name: str) -> list[float]:
    """ttskit's speaker code: each hex digit d of md5(name) becomes (d - 7) / 10."""
    return [(int(c, 16) - 7) / 10 for c in hashlib.md5(name.encode("utf8")).hexdigest()]


def max_frames(n_symbols: int) -> int:
    """Decoder length guard for an input of n_symbols, so a missed stop cannot run on."""
    return min(FRAMES_PER_SYMBOL_LIMIT * n_symbols + FRAMES_LIMIT_SLACK, MAX_DECODER_STEPS)


def fold_batchnorm(conv: dict[str, torch.Tensor], bn: dict[str, torch.Tensor], eps: float = 1e-5) -> dict:
    """Fold an eval-mode BatchNorm1d into the preceding Conv1d's weight and bias."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    return {"weight": conv["weight"] * scale[:, None, None], "bias": (conv["bias"] - bn["running_mean"]) * scale + bn["bias"]}


def _folded_conv_stack(sd: dict[str, torch.Tensor], theirs: str, ours: str, n: int) -> dict[str, torch.Tensor]:
    """ttskit's n (Conv1d, BatchNorm1d) pairs under `theirs` -> our n folded Conv1d weights under `ours`."""
    out = {}
    for i in range(n):
        p = f"{theirs}.{i}."
        conv = {"weight": sd[p + "0.conv.weight"], "bias": sd[p + "0.conv.bias"]}
        bn = {k: sd[p + "1." + k] for k in ("weight", "bias", "running_mean", "running_var")}
        out.update({f"{ours}.{i}.{k}": v for k, v in fold_batchnorm(conv, bn).items()})
    return out


@dataclass(frozen=True)
class TacotronConfig:
    """Shapes of ttskit's mspk model (from its hparams JSON)."""

    n_symbols: int = 145
    embedding_dim: int = 256
    encoder_kernel: int = 5
    encoder_convs: int = 3
    speaker_dim: int = 32
    attention_rnn_dim: int = 512
    decoder_rnn_dim: int = 512
    prenet_dim: int = 128
    attention_dim: int = 64
    location_filters: int = 16
    location_kernel: int = 31
    postnet_dim: int = 256
    postnet_kernel: int = 5
    postnet_convs: int = 5

    @classmethod
    def from_hparams(cls, hp: dict) -> "TacotronConfig":
        return cls(
            n_symbols=hp["n_symbols"], embedding_dim=hp["symbols_embedding_dim"], encoder_kernel=hp["encoder_kernel_size"],
            encoder_convs=hp["encoder_n_convolutions"], speaker_dim=hp["speaker_embedding_dim"],
            attention_rnn_dim=hp["attention_rnn_dim"], decoder_rnn_dim=hp["decoder_rnn_dim"], prenet_dim=hp["prenet_dim"],
            attention_dim=hp["attention_dim"], location_filters=hp["attention_location_n_filters"],
            location_kernel=hp["attention_location_kernel_size"], postnet_dim=hp["postnet_embedding_dim"],
            postnet_kernel=hp["postnet_kernel_size"], postnet_convs=hp["postnet_n_convolutions"],
        )


def masked_conv_stack(x: torch.Tensor, convs: nn.ModuleList, keep: torch.Tensor, activation, activate_last: bool) -> torch.Tensor:
    """Run same-padded convs, zeroing frames past each item's end before every conv (as batch 1 sees them)."""
    for i, conv in enumerate(convs):
        x = conv(x * keep)
        if activate_last or i < len(convs) - 1:
            x = activation(x)
    return x * keep


class Tacotron(nn.Module):
    """Embedding + conv/BiLSTM encoder, location-sensitive attention decoder, conv postnet."""

    def __init__(self, cfg: TacotronConfig) -> None:
        super().__init__()
        self.cfg = cfg
        memory_dim = cfg.embedding_dim + cfg.speaker_dim
        self.memory_dim = memory_dim
        self.embedding = nn.Embedding(cfg.n_symbols, cfg.embedding_dim)
        pad = (cfg.encoder_kernel - 1) // 2
        self.encoder_convs = nn.ModuleList(
            nn.Conv1d(cfg.embedding_dim, cfg.embedding_dim, cfg.encoder_kernel, padding=pad) for _ in range(cfg.encoder_convs)
        )
        self.encoder_lstm = nn.LSTM(cfg.embedding_dim, cfg.embedding_dim // 2, batch_first=True, bidirectional=True)
        self.speaker_embedding = nn.Linear(cfg.speaker_dim, cfg.speaker_dim)
        self.prenet = nn.ModuleList([nn.Linear(N_MELS, cfg.prenet_dim, bias=False), nn.Linear(cfg.prenet_dim, cfg.prenet_dim, bias=False)])
        self.attention_rnn = nn.LSTMCell(cfg.prenet_dim + memory_dim, cfg.attention_rnn_dim)
        self.query_layer = nn.Linear(cfg.attention_rnn_dim, cfg.attention_dim, bias=False)
        self.memory_layer = nn.Linear(memory_dim, cfg.attention_dim, bias=False)
        self.energy_layer = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.location_conv = nn.Conv1d(2, cfg.location_filters, cfg.location_kernel, padding=(cfg.location_kernel - 1) // 2, bias=False)
        self.location_dense = nn.Linear(cfg.location_filters, cfg.attention_dim, bias=False)
        self.decoder_rnn = nn.LSTMCell(cfg.attention_rnn_dim + memory_dim, cfg.decoder_rnn_dim)
        self.projection = nn.Linear(cfg.decoder_rnn_dim + memory_dim, N_MELS + 1)  # 80 mel bands + 1 stop gate
        pk = (cfg.postnet_kernel - 1) // 2
        dims = [N_MELS] + [cfg.postnet_dim] * (cfg.postnet_convs - 1) + [N_MELS]
        self.postnet = nn.ModuleList(nn.Conv1d(a, b, cfg.postnet_kernel, padding=pk) for a, b in zip(dims[:-1], dims[1:]))

    def load_ttskit_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Map ttskit's parameter names onto ours, folding BatchNorm and merging mel projection with the gate."""
        out = {"embedding.weight": sd["embedding.weight"]}
        out.update(_folded_conv_stack(sd, "encoder.convolutions", "encoder_convs", self.cfg.encoder_convs))
        for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            out[f"encoder_lstm.{k}"] = sd[f"encoder.lstm.{k}"]
            out[f"encoder_lstm.{k}_reverse"] = sd[f"encoder.lstm.{k}_reverse"]
        out["speaker_embedding.weight"] = sd["speaker_embedding.weight"]
        out["speaker_embedding.bias"] = sd["speaker_embedding.bias"]
        for i in range(2):
            out[f"prenet.{i}.weight"] = sd[f"decoder.prenet.layers.{i}.linear_layer.weight"]
        for rnn in ("attention_rnn", "decoder_rnn"):
            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                out[f"{rnn}.{k}"] = sd[f"decoder.{rnn}.{k}"]
        a = "decoder.attention_layer."
        out["query_layer.weight"] = sd[a + "query_layer.linear_layer.weight"]
        out["memory_layer.weight"] = sd[a + "memory_layer.linear_layer.weight"]
        out["energy_layer.weight"] = sd[a + "v.linear_layer.weight"]
        out["location_conv.weight"] = sd[a + "location_layer.location_conv.conv.weight"]
        out["location_dense.weight"] = sd[a + "location_layer.location_dense.linear_layer.weight"]
        out["projection.weight"] = torch.cat([sd["decoder.linear_projection.linear_layer.weight"], sd["decoder.gate_layer.linear_layer.weight"]])
        out["projection.bias"] = torch.cat([sd["decoder.linear_projection.linear_layer.bias"], sd["decoder.gate_layer.linear_layer.bias"]])
        out.update(_folded_conv_stack(sd, "postnet.convolutions", "postnet", self.cfg.postnet_convs))
        self.load_state_dict(out, strict=True)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, (B,) lengths, (B, 32) speaker codes -> (B, T, memory_dim) memory, zero past each end."""
        keep = (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]).unsqueeze(1).to(self.embedding.weight.dtype)
        x = self.embedding(ids).transpose(1, 2)
        x = masked_conv_stack(x, self.encoder_convs, keep, F.relu, activate_last=True).transpose(1, 2)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        x, _ = self.encoder_lstm(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=ids.shape[1])
        spk = self.speaker_embedding(speakers)[:, None].expand(-1, x.shape[1], -1)
        return torch.cat([x, spk], dim=2) * keep.transpose(1, 2)

    def postnet_residual(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) decoder mel -> mel + postnet(mel), each item masked to its own length."""
        keep = (torch.arange(mel.shape[2], device=mel.device)[None] < lengths[:, None]).unsqueeze(1).to(mel.dtype)
        return (mel + masked_conv_stack(mel, self.postnet, keep, torch.tanh, activate_last=False)) * keep

    def decoder_step(self, frame: torch.Tensor, drop: torch.Tensor, state: tuple, memory: torch.Tensor,
                     processed: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """One decoder step for every row, shared by the dynamic loop and the static (graph-captured) one.

        frame (B, 80) the previous frame, drop (B, 2, prenet_dim) this step's dropout, state (ah, ac, dh, dc, aw, awc,
        ctx) -> projection output (B, 81: 80 mel bands + stop gate) and the new state. Rows never mix.
        """
        ah, ac, dh, dc, aw, awc, ctx = state
        x = F.relu(self.prenet[0](frame)) * drop[:, 0]
        x = F.relu(self.prenet[1](x)) * drop[:, 1]
        ah, ac = self.attention_rnn(torch.cat([x, ctx], 1), (ah, ac))
        location = self.location_dense(self.location_conv(torch.stack([aw, awc], 1)).transpose(1, 2))
        energy = self.energy_layer(torch.tanh(self.query_layer(ah)[:, None] + location + processed)).squeeze(-1)
        aw = torch.softmax(energy.float().masked_fill(pad_mask, float("-inf")), dim=1).to(frame.dtype)
        awc = awc + aw
        ctx = torch.bmm(aw[:, None], memory).squeeze(1)
        dh, dc = self.decoder_rnn(torch.cat([ah, ctx], 1), (dh, dc))
        return self.projection(torch.cat([dh, ctx], 1)), (ah, ac, dh, dc, aw, awc, ctx)

    def zero_state(self, batch: int, memory_len: int, device, dtype) -> tuple[torch.Tensor, ...]:
        """Decoder state at step 0: (ah, ac, dh, dc, aw, awc, ctx), all zeros."""
        c = self.cfg
        widths = (c.attention_rnn_dim, c.attention_rnn_dim, c.decoder_rnn_dim, c.decoder_rnn_dim, memory_len, memory_len, self.memory_dim)
        return tuple(torch.zeros(batch, w, device=device, dtype=dtype) for w in widths)

    @torch.no_grad()
    def infer(
        self, ids: torch.Tensor, lengths: torch.Tensor, speakers: torch.Tensor, keys: torch.Tensor,
        limits: list[int], check_every: int = 1, static=None,
    ) -> tuple[torch.Tensor, list[int], list[bool]]:
        """Decode a padded batch until each item's own gate fires (or its limit).

        ids (B, T) long, lengths (B,) long, speakers (B, 32), keys (B,) int64 on the device: each item's dropout key
        (dropout.item_keys of its seed; its masks are made from it step by step), limits: max frames per item.
        static: a StaticTacotronDecoder (fixed shapes, CUDA graphs); None, or a batch it has no bucket for, decodes with
        the dynamic loop. Returns mel after postnet (B, 80, max_len), frame counts, and whether each item stopped on
        its gate.
        """
        memory = self.encode(ids, lengths, speakers)
        processed = self.memory_layer(memory)
        spans.mark("decoder")
        decoded = static.decode(memory, processed, lengths, keys, limits) if static is not None else None
        if decoded is None:
            decoded = self._decode_dynamic(memory, processed, lengths, keys, limits, check_every)
        mel, frame_lengths, stopped = decoded
        spans.annotate(frames=sum(frame_lengths))
        spans.mark("postnet")
        return self.postnet_residual(mel, torch.tensor(frame_lengths, device=ids.device)), frame_lengths, stopped

    def _decode_dynamic(
        self, memory: torch.Tensor, processed: torch.Tensor, lengths: torch.Tensor, keys: torch.Tensor,
        limits: list[int], check_every: int,
    ) -> tuple[torch.Tensor, list[int], list[bool]]:
        """The dynamic loop: finished items leave the batch at the next check (every check_every steps), so no
        compute is spent on them. Returns the decoder mel (B, 80, max_len), frame counts and gate flags."""
        device, dtype = memory.device, memory.dtype
        batch = memory.shape[0]
        pad_mask = torch.arange(memory.shape[1], device=device)[None] >= lengths[:, None]
        steps = max(limits)
        mel = torch.zeros(batch, steps, N_MELS, device=device, dtype=dtype)
        gates = torch.zeros(batch, steps, device=device, dtype=torch.float32)
        state = self.zero_state(batch, memory.shape[1], device, dtype)
        frame = torch.zeros(batch, N_MELS, device=device, dtype=dtype)
        rows = torch.arange(batch, device=device)  # original batch index of each active row
        active = list(range(batch))
        frame_lengths, stopped = [0] * batch, [False] * batch
        last_check = 0
        offsets = unit_offsets(MASK_BLOCK_STEPS, self.cfg.prenet_dim, device)
        for step in range(steps):
            if step % MASK_BLOCK_STEPS == 0:  # the same masks the static chunk makes: a function of key, step, unit
                masks = prenet_masks(keys, step, offsets, PRENET_DROPOUT, dtype)
            out, state = self.decoder_step(frame, masks[:, step % MASK_BLOCK_STEPS], state, memory, processed, pad_mask)
            frame = out[:, :N_MELS]
            mel[rows, step] = frame
            gates[rows, step] = out[:, N_MELS].float()
            if (step + 1) % check_every and step + 1 < steps:
                continue
            window = torch.sigmoid(gates[rows, last_check : step + 1]).cpu()
            keep = []
            for a, item in enumerate(active):
                limit = limits[item]
                fired = (window[a, : max(0, limit - last_check)] > GATE_THRESHOLD).nonzero()
                if len(fired):
                    frame_lengths[item], stopped[item] = max(1, last_check + int(fired[0])), True
                elif step + 1 >= limit:
                    frame_lengths[item] = limit
                else:
                    keep.append(a)
            last_check = step + 1
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=device)
                active = [active[a] for a in keep]
                rows, frame, keys, masks = rows[idx], frame[idx], keys[idx], masks[idx]
                span = int(lengths[rows].max())  # trim padding no remaining item needs
                memory, processed, pad_mask = memory[idx, :span], processed[idx, :span], pad_mask[idx, :span]
                ah, ac, dh, dc, aw, awc, ctx = (t[idx] for t in state)
                state = (ah, ac, dh, dc, aw[:, :span], awc[:, :span], ctx)
        spans.annotate(steps=last_check)  # iterations run: the loop ends at a check
        return mel[:, : max(frame_lengths)].transpose(1, 2), frame_lengths, stopped
