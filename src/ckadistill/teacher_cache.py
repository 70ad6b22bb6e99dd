"""Teacher outputs computed once and replayed every epoch.

The teacher is frozen, in eval mode and deterministic, so its logits and hidden states for a training
example are the same in every epoch. For small students the teacher's forward pass dominates a
distillation step; one pass over the training set, kept in memory, removes it from every later step.

Each mapped teacher layer is stored as one `(N, d_t)` fp16 tensor of the real tokens of all training
examples, concatenated in dataset order, with per-example offsets; class logits are kept in fp32. An
encoder-decoder's outputs are per target position: the decoder's layers and its token logits (fp16,
`(N_target, V)`) are kept for the positions that predict a real target token (`labels != -100`), read
with the decoder inputs the student's own rule builds from the labels, so replaying them needs the same
targets in every epoch (fixed rows; pseudo-label files qualify). With
`--cache_teacher_dir` the cache is also written to disk under a digest of the teacher's weights, the
training rows and the layers, and read back by any later run with the same three (other seeds, other
student shapes that map the same layers, a resumed run).

A student with a trimmed vocabulary reads its own token ids; with `token_ids` (student id -> teacher id)
the teacher is run on, and the key digests, the teacher's ids of the same tokens: the cache holds what the
teacher read, per training row and real token, in the student's positions.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ckadistill.losses import IGNORE_INDEX

logger = logging.getLogger(__name__)

EXAMPLE_ID = "example_id"  # dataset column that tells the cache which rows a batch holds
# hidden states and token logits: range to 65504, ~3 significant digits; CKA and KL run in fp32
STORAGE_DTYPE = torch.float16


class TeacherCache:
    """Logits and selected hidden states of a teacher for every row of a dataset.

    Build with `TeacherCache.build`; read with `logits(ids)` (an encoder-decoder's: `token_logits(ids)`)
    and `hidden_rows(layer, ids)` (`decoder=True` for an encoder-decoder's decoder layers).
    """

    def __init__(
        self,
        logits: Tensor,
        states: dict[int, Tensor],
        offsets: Tensor,
        *,
        decoder_states: dict[int, Tensor] | None = None,
        target_offsets: Tensor | None = None,
    ):
        # (num_examples, C) fp32 class logits; an encoder-decoder's (num_target_tokens, V) fp16 token logits
        self._logits = logits
        self._states = states  # teacher layer -> (num_tokens, d_t) fp16 (an encoder-decoder's encoder)
        self._offsets = offsets  # (num_examples + 1,) start of each example's tokens
        self._decoder_states = decoder_states or {}  # decoder layer -> (num_target_tokens, d_t) fp16
        self._target_offsets = target_offsets  # (num_examples + 1,), encoder-decoders only

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self._states)

    @property
    def decoder_layers(self) -> tuple[int, ...]:
        return tuple(self._decoder_states)

    @property
    def per_token_logits(self) -> bool:
        """Whether the logits are an encoder-decoder's, one row per target position."""
        return self._target_offsets is not None

    @property
    def nbytes(self) -> int:
        tensors = [self._logits, *self._states.values(), *self._decoder_states.values()]
        return sum(t.nbytes for t in tensors)

    @staticmethod
    def estimate_bytes(
        num_tokens: int,
        num_examples: int,
        width: int,
        num_layers: int,
        num_labels: int,
        *,
        num_target_tokens: int = 0,
        decoder_width: int = 0,
        num_decoder_layers: int = 0,
        vocab_size: int = 0,
    ) -> int:
        """Memory the cache will take, from the token counts alone (`vocab_size` for encoder-decoders)."""
        source = num_tokens * width * num_layers * STORAGE_DTYPE.itemsize + num_examples * num_labels * 4
        per_target = (decoder_width * num_decoder_layers + vocab_size) * STORAGE_DTYPE.itemsize
        return source + num_target_tokens * per_target

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher,
        dataset,
        collator,
        layers: Sequence[int],
        *,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        token_ids: Tensor | None = None,
        decoder_layers: Sequence[int] = (),
        decoder_inputs: Callable[[Tensor], Tensor] | None = None,
    ) -> TeacherCache:
        """Run the teacher once over `dataset` (in order; rows must carry `EXAMPLE_ID` = row index).

        Args:
            teacher: a sequence-classification model, a bare encoder (no logits: `logits` then
                returns `(B, 0)`) or an encoder-decoder LM, already in eval mode.
            dataset: tokenised rows (`input_ids`, `attention_mask`, ...; `labels` for an encoder-decoder).
            collator: pads a list of rows into a batch (labels with -100).
            layers: indices into the teacher's `hidden_states` (an encoder-decoder's
                `encoder_hidden_states`) to keep (0 = embeddings).
            token_ids: `(V_s,)` teacher id of each id in `dataset` (a trimmed student's rows), or None.
            decoder_layers: indices into an encoder-decoder's `decoder_hidden_states` to keep.
            decoder_inputs: an encoder-decoder's rule from `(B, T)` labels to decoder input ids (the
                student's `prepare_decoder_input_ids_from_labels`, so both models read the same inputs).
        """
        seq2seq = bool(teacher.config.is_encoder_decoder)
        if seq2seq and decoder_inputs is None:
            raise ValueError(
                "an encoder-decoder teacher's cache needs `decoder_inputs` (labels -> decoder ids)"
            )
        wanted = ("input_ids", "attention_mask", "token_type_ids") + (("labels",) if seq2seq else ())
        rows = dataset.select_columns([c for c in dataset.column_names if c in wanted])
        loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collator)
        layers = sorted(set(int(i) for i in layers))
        decoder_layers = sorted(set(int(i) for i in decoder_layers))
        table = None if token_ids is None else token_ids.to(device)
        logits, lengths, target_lengths = [], [], []
        states: dict[int, list[Tensor]] = {i: [] for i in layers}
        decoder_states: dict[int, list[Tensor]] = {i: [] for i in decoder_layers}
        for batch in tqdm(loader, desc="Caching teacher outputs", unit="batch"):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels", None)
            if seq2seq:
                batch["decoder_input_ids"] = decoder_inputs(labels)  # (B, T)
                batch["use_cache"] = False
            if table is not None:
                for key in ("input_ids", "decoder_input_ids"):
                    if key in batch:
                        batch[key] = table[batch[key]]  # (B, T) teacher ids
            out = teacher(**batch, output_hidden_states=bool(layers or decoder_layers))
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(batch["input_ids"])
            keep = mask.bool()  # (B, T)
            lengths.append(keep.sum(dim=1).cpu())
            found = getattr(out, "logits", None)
            if seq2seq:
                target = labels != IGNORE_INDEX  # (B, T): the positions the losses read
                target_lengths.append(target.sum(dim=1).cpu())
                logits.append(found[target].to(STORAGE_DTYPE).cpu())  # (n_batch, V)
                for i in decoder_layers:
                    decoder_states[i].append(out.decoder_hidden_states[i][target].to(STORAGE_DTYPE).cpu())
                encoder_states = out.encoder_hidden_states
            else:
                logits.append(found.float().cpu() if found is not None else torch.zeros(len(keep), 0))
                encoder_states = out.hidden_states
            for i in layers:
                states[i].append(encoder_states[i][keep].to(STORAGE_DTYPE).cpu())  # (n_batch, d_t)
        cache = cls(
            torch.cat(logits),
            {i: torch.cat(s) for i, s in states.items()},
            _offsets(lengths),
            decoder_states={i: torch.cat(s) for i, s in decoder_states.items()},
            target_offsets=_offsets(target_lengths) if seq2seq else None,
        )
        logger.info(
            "Cached teacher outputs: %d examples, %d tokens, layers %s%s, %.1f MiB",
            len(cache._offsets) - 1,
            int(cache._offsets[-1]),
            list(layers),
            f", {int(cache._target_offsets[-1])} target positions, decoder layers {decoder_layers}"
            if seq2seq
            else "",
            cache.nbytes / 2**20,
        )
        return cache

    # ---- on disk: one build serves every run over the same teacher and data (seeds, sweeps) -------

    @staticmethod
    def key(
        teacher,
        dataset,
        layers: Sequence[int],
        token_ids: Tensor | None = None,
        decoder_layers: Sequence[int] = (),
    ) -> str:
        """A digest of everything the cached values depend on: the teacher's weights and config, the
        tokenised training rows (and targets) as the teacher reads them (through `token_ids` for a
        trimmed student's rows), and the layers kept. Any change gives another key, so a stale file is
        never read."""
        digest = hashlib.sha256()
        digest.update(teacher.config.to_json_string(use_diff=False).encode())
        for name, tensor in sorted(teacher.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        names = ("input_ids", "attention_mask", "token_type_ids", "labels")
        columns = [c for c in names if c in dataset.column_names]
        table = None if token_ids is None else token_ids.cpu().numpy().astype(np.int64)
        for column in columns:
            digest.update(column.encode())
            for row in dataset[column]:
                row = np.asarray(row, dtype=np.int64)
                if table is not None and column in ("input_ids", "labels"):
                    # the teacher's ids of the student's tokens (-100 in labels kept)
                    row = np.where(row >= 0, table[np.maximum(row, 0)], row)
                digest.update(row.tobytes())
                digest.update(b"|")
        digest.update(repr(sorted(int(i) for i in layers)).encode())
        if decoder_layers:
            digest.update(b"decoder" + repr(sorted(int(i) for i in decoder_layers)).encode())
        digest.update(str(STORAGE_DTYPE).encode())
        return digest.hexdigest()[:20]

    def save(self, path: str | Path) -> None:
        """Write the cache as one safetensors file; written beside and renamed, so never half-written."""
        tensors = {"logits": self._logits.contiguous(), "offsets": self._offsets.contiguous()}
        tensors.update({f"layer.{i}": s.contiguous() for i, s in self._states.items()})
        tensors.update({f"decoder_layer.{i}": s.contiguous() for i, s in self._decoder_states.items()})
        if self._target_offsets is not None:
            tensors["target_offsets"] = self._target_offsets.contiguous()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        tensors = load_file(str(path))

        def layers(prefix: str) -> dict[int, Tensor]:
            found = {int(k[len(prefix) :]): v for k, v in tensors.items() if k.startswith(prefix)}
            return dict(sorted(found.items()))

        return cls(
            tensors["logits"],
            layers("layer."),
            tensors["offsets"],
            decoder_states=layers("decoder_layer."),
            target_offsets=tensors.get("target_offsets"),
        )

    # ---- reading -------------------------------------------------------------------------------

    def logits(self, example_ids: Tensor) -> Tensor:
        """`(B, C)` fp32 teacher logits of the given rows."""
        if self.per_token_logits:
            raise TypeError("an encoder-decoder's logits are per target position: read token_logits")
        return self._logits[example_ids.cpu()]

    def token_logits(self, example_ids: Tensor) -> Tensor:
        """`(n, V)` fp32 token logits of the given rows' target positions, batch-major (the order in
        which `select_tokens` lists the positions of `labels != -100`)."""
        return _rows(self._logits, self._target_offsets, example_ids).float()

    def hidden_rows(self, layer: int, example_ids: Tensor, *, decoder: bool = False) -> Tensor:
        """`(n, d_t)` fp32 real-token states of the given rows, batch-major: the order in which
        `ckadistill.losses.select_tokens` lists the real tokens (with `decoder`, the target positions) of
        the same batch."""
        if decoder:
            return _rows(self._decoder_states[layer], self._target_offsets, example_ids).float()
        return _rows(self._states[layer], self._offsets, example_ids).float()  # (n, d_t)

    def pooled(self, layer: int, example_ids: Tensor, pooling: str = "mean") -> Tensor:
        """`(B, d_t)` fp32 sentence vectors of the given rows from a cached layer: the mean of each
        row's real tokens, or its first token (`pooling="cls"`)."""
        from ckadistill.losses import mean_pool

        ids = example_ids.cpu()
        if pooling == "cls":
            return self._states[layer][self._offsets[ids]].float()
        lengths = self._offsets[ids + 1] - self._offsets[ids]  # (B,)
        return mean_pool(self.hidden_rows(layer, example_ids), lengths=lengths)

    def num_tokens(self, example_ids: Tensor) -> int:
        ids = example_ids.cpu()
        return int((self._offsets[ids + 1] - self._offsets[ids]).sum())


def _offsets(lengths: list[Tensor]) -> Tensor:
    """`(N + 1,)` start of each example's rows from per-batch `(B,)` row counts."""
    lengths_all = torch.cat(lengths)
    offsets = torch.zeros(len(lengths_all) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths_all, dim=0)
    return offsets


def _rows(table: Tensor, offsets: Tensor, example_ids: Tensor) -> Tensor:
    """The rows of `table` that belong to the given examples, in their order."""
    ids = example_ids.cpu()
    starts, ends = offsets[ids].tolist(), offsets[ids + 1].tolist()
    return torch.cat([table[s:e] for s, e in zip(starts, ends, strict=True)])
