"""Teacher outputs computed once and replayed every epoch.

The teacher is frozen, in eval mode and deterministic, so its logits and hidden states for a training
example are the same in every epoch. For small students the teacher's forward pass dominates a
distillation step; one pass over the training set, kept in memory, removes it from every later step.

Each mapped teacher layer is stored as one `(N, d_t)` fp16 tensor of the real tokens of all training
examples, concatenated in dataset order, with per-example offsets; logits are kept in fp32. With
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

EXAMPLE_ID = "example_id"  # dataset column that tells the cache which rows a batch holds
STORAGE_DTYPE = torch.float16  # hidden states: range to 65504, ~3 significant digits; CKA runs in fp32


class TeacherCache:
    """Logits and selected hidden states of a teacher for every row of a dataset.

    Build with `TeacherCache.build`; read with `logits(ids)` and `hidden_rows(layer, ids)`.
    """

    def __init__(self, logits: Tensor, states: dict[int, Tensor], offsets: Tensor):
        self._logits = logits  # (num_examples, C) fp32
        self._states = states  # teacher layer -> (num_tokens, d_t) fp16
        self._offsets = offsets  # (num_examples + 1,) start of each example's tokens

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self._states)

    @property
    def nbytes(self) -> int:
        return self._logits.nbytes + sum(s.nbytes for s in self._states.values())

    @staticmethod
    def estimate_bytes(
        num_tokens: int, num_examples: int, width: int, num_layers: int, num_labels: int
    ) -> int:
        """Memory the cache will take, from the token count alone."""
        return num_tokens * width * num_layers * STORAGE_DTYPE.itemsize + num_examples * num_labels * 4

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
    ) -> TeacherCache:
        """Run the teacher once over `dataset` (in order; rows must carry `EXAMPLE_ID` = row index).

        Args:
            teacher: a sequence-classification model, or a bare encoder (no logits: `logits` then
                returns `(B, 0)`), already in eval mode.
            dataset: tokenised rows (`input_ids`, `attention_mask`, ...).
            collator: pads a list of rows into a batch.
            layers: indices into the teacher's `hidden_states` to keep (0 = embeddings).
            token_ids: `(V_s,)` teacher id of each id in `dataset` (a trimmed student's rows), or None.
        """
        columns = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
        rows = dataset.select_columns(columns)
        loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collator)
        layers = sorted(set(int(i) for i in layers))
        logits, lengths = [], []
        states: dict[int, list[Tensor]] = {i: [] for i in layers}
        for batch in tqdm(loader, desc="Caching teacher outputs", unit="batch"):
            batch = {k: v.to(device) for k, v in batch.items()}
            if token_ids is not None:
                batch["input_ids"] = token_ids.to(device)[batch["input_ids"]]  # (B, T) teacher ids
            out = teacher(**batch, output_hidden_states=bool(layers))
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(batch["input_ids"])
            keep = mask.bool()  # (B, T)
            lengths.append(keep.sum(dim=1).cpu())
            found = getattr(out, "logits", None)
            logits.append(found.float().cpu() if found is not None else torch.zeros(len(keep), 0))
            for i in layers:
                states[i].append(out.hidden_states[i][keep].to(STORAGE_DTYPE).cpu())  # (n_batch, d_t)
        lengths_all = torch.cat(lengths)
        offsets = torch.zeros(len(lengths_all) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths_all, dim=0)
        cache = cls(torch.cat(logits), {i: torch.cat(s) for i, s in states.items()}, offsets)
        logger.info(
            "Cached teacher outputs: %d examples, %d tokens, layers %s, %.1f MiB",
            len(lengths_all),
            int(offsets[-1]),
            list(layers),
            cache.nbytes / 2**20,
        )
        return cache

    # ---- on disk: one build serves every run over the same teacher and data (seeds, sweeps) -------

    @staticmethod
    def key(teacher, dataset, layers: Sequence[int], token_ids: Tensor | None = None) -> str:
        """A digest of everything the cached values depend on: the teacher's weights and config, the
        tokenised training rows as the teacher reads them (through `token_ids` for a trimmed student's
        rows), and the layers kept. Any change gives another key, so a stale file is never read."""
        digest = hashlib.sha256()
        digest.update(teacher.config.to_json_string(use_diff=False).encode())
        for name, tensor in sorted(teacher.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
        table = None if token_ids is None else token_ids.cpu().numpy().astype(np.int64)
        for column in columns:
            digest.update(column.encode())
            for row in dataset[column]:
                row = np.asarray(row, dtype=np.int64)
                if table is not None and column == "input_ids":
                    row = table[row]  # the teacher's ids of the student's tokens
                digest.update(row.tobytes())
                digest.update(b"|")
        digest.update(repr(sorted(int(i) for i in layers)).encode())
        digest.update(str(STORAGE_DTYPE).encode())
        return digest.hexdigest()[:20]

    def save(self, path: str | Path) -> None:
        """Write the cache as one safetensors file; written beside and renamed, so never half-written."""
        tensors = {"logits": self._logits.contiguous(), "offsets": self._offsets.contiguous()}
        tensors.update({f"layer.{i}": s.contiguous() for i, s in self._states.items()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        tensors = load_file(str(path))
        states = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")}
        return cls(tensors["logits"], dict(sorted(states.items())), tensors["offsets"])

    # ---- reading -------------------------------------------------------------------------------

    def logits(self, example_ids: Tensor) -> Tensor:
        """`(B, C)` fp32 teacher logits of the given rows."""
        return self._logits[example_ids.cpu()]

    def hidden_rows(self, layer: int, example_ids: Tensor) -> Tensor:
        """`(n, d_t)` fp32 real-token states of the given rows, batch-major: the order in which
        `ckadistill.losses.select_tokens` lists the real tokens of the same batch."""
        starts, ends = self._offsets[example_ids.cpu()], self._offsets[example_ids.cpu() + 1]
        parts = [self._states[layer][s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        return torch.cat(parts).float()  # (n, d_t)

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
