"""Warm-started encoder-decoders: a bert2bert model built from one BERT-like checkpoint, and an optimizer
that trains its fresh parameters faster.

`EncoderDecoderModel.from_encoder_decoder_pretrained` copies a pretrained encoder into both stacks; the
cross-attention and the decoder's LM-head transform start from random weights. They learn much more
slowly than the pretrained rest at one learning rate, so `finetune --fresh_lr_multiplier` gives them a
multiple of it (`fresh_lr_optimizer`). `ckadistill quickstart --task summarization` builds its teacher with
`warm_start_bert2bert`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ckadistill.config import TaskTrainingArguments

logger = logging.getLogger(__name__)

# Parameters a warm-started bert2bert did not get from its BERT checkpoint: every cross-attention weight,
# and the decoder's LM-head transform and output bias (the output weight is tied to the pretrained word
# embeddings, and `named_parameters` lists it under them). Found by name, not from `from_pretrained`'s
# loading info: once the warm-started model is saved (the quickstart saves it, so that an interrupted
# fine-tune resumes from it) the checkpoint holds every tensor and the loading info reports none missing.
FRESH_PARAMETER_PATTERNS = ("crossattention.", "decoder.cls.predictions.")


def fresh_parameter_names(model) -> list[str]:
    """Names of the trainable parameters that match `FRESH_PARAMETER_PATTERNS`."""
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and any(pattern in name for pattern in FRESH_PARAMETER_PATTERNS)
    ]


def fresh_lr_optimizer(
    model, training_args: TaskTrainingArguments, multiplier: float
) -> torch.optim.Optimizer:
    """The Trainer's optimizer, with the fresh parameters (`fresh_parameter_names`) at `multiplier` × the rate.

    Four parameter groups: the other parameters with and without weight decay at `--learning_rate`
    (first, so the logged `learning_rate` is the base schedule), then the fresh ones with and without
    weight decay at `multiplier × --learning_rate`. Weight decay follows the Trainer's own
    `get_decay_parameter_names` (none on biases and LayerNorm), and the optimizer class and its
    arguments (betas, eps, ...) follow `--optim` through `Trainer.get_optimizer_cls_and_kwargs`.

    Handed to the Trainer as `optimizers=(optimizer, None)`, it still gets the Trainer's schedule:
    `get_scheduler` builds a `LambdaLR`, which sets every group's rate to its initial rate times the
    same factor at each step, so warm-up and decay keep the ratio between the groups.

    Raises:
        ValueError: no parameter of the model is fresh (not a bert2bert model), naming the flag.
    """
    from transformers import Seq2SeqTrainer
    from transformers.trainer_optimizer import is_optimizer_factory

    fresh = set(fresh_parameter_names(model))
    if not fresh:
        raise ValueError(
            f"--fresh_lr_multiplier {multiplier:g} found no fresh parameters in this {model.config.model_type} "
            f"model (names containing {' or '.join(FRESH_PARAMETER_PATTERNS)}: bert2bert cross-attention); "
            "leave it at 1 for other models"
        )
    # `get_decay_parameter_names` reads nothing from the Trainer instance: called unbound, before the
    # Trainer exists, it gives the very names the Trainer's own `create_optimizer` would use.
    decay = set(Seq2SeqTrainer.get_decay_parameter_names(None, model))
    optimizer_cls, optimizer_kwargs = Seq2SeqTrainer.get_optimizer_cls_and_kwargs(training_args, model)
    if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
        raise ValueError(
            f"--fresh_lr_multiplier needs an optimizer built from parameter groups, but --optim "
            f"{training_args.optim} builds its own: use an AdamW --optim (e.g. adamw_torch) or leave the "
            "multiplier at 1"
        )
    base_lr = training_args.learning_rate
    groups = []
    for is_fresh, lr in ((False, base_lr), (True, base_lr * multiplier)):
        for has_decay, weight_decay in ((True, training_args.weight_decay), (False, 0.0)):
            params = [
                p
                for n, p in model.named_parameters()
                if p.requires_grad and (n in fresh) == is_fresh and (n in decay) == has_decay
            ]
            groups.append({"params": params, "weight_decay": weight_decay, "lr": lr})
    logger.info(
        "Fresh parameters (%s) learn at %g × %g: %d tensors, %d values",
        ", ".join(FRESH_PARAMETER_PATTERNS),
        multiplier,
        base_lr,
        len(fresh),
        sum(p.numel() for g in groups[2:] for p in g["params"]),
    )
    return optimizer_cls(groups, **optimizer_kwargs)


def warm_start_bert2bert(base: str, output: Path, seed: int) -> Path:
    """Save a bert2bert `EncoderDecoderModel` with `base` on both sides, and its tokenizer, to `output`.

    Generation follows HF's bert2bert recipe: the decoder starts from [CLS] and stops at [SEP]. The
    cross-attention and the decoder's LM-head transform are freshly initialised (seeded).
    """
    import transformers
    from transformers import AutoTokenizer, EncoderDecoderModel

    tokenizer = AutoTokenizer.from_pretrained(base)
    transformers.set_seed(seed)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its table of fresh weights is expected; summarised below
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(base, base)
    finally:
        transformers.logging.set_verbosity(verbosity)
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.eos_token_id = tokenizer.sep_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    fresh = set(fresh_parameter_names(model))
    logger.info(
        "Warm-started bert2bert from %s: %d parameters, %d fresh tensors (%d values: cross-attention, LM-head transform)",
        base,
        sum(p.numel() for p in model.parameters()),
        len(fresh),
        sum(p.numel() for n, p in model.named_parameters() if n in fresh),
    )
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
