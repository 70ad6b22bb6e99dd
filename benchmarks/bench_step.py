"""What one whole distillation step costs, per hidden-state loss, side by side in one run.

A step is what the Trainer does per batch: teacher forward (no gradient) + student forward and backward
+ optimiser step, through `DistillationTrainer.training_step`, so every part of the loss path is
counted (hidden-state selection, the loss terms, their logging). Random weights at two shapes:

    bert-base   12L d768 teacher -> 4L d384 student (slice), sequence classification, batch 16 × 256
    bart-base   6+6 d768 teacher -> 3+3 d384 student (slice), generation LM, batch 8, source 256, target 64
    bart-large  12+12 d1024 teacher -> 3+3 d512 student (slice), batch 8, source 512, target 128
                (for GPUs: benchmarks/gpu_check.sh)

Hidden losses, each with its own trainer over the same models and batch:

    none         plain KD (task CE + logit KL): no hidden states asked for, no layer pairs
    mse_proj     TinyBERT's learned projection + MSE per pair (CKA per pair logged without gradient)
    cka          `1 - CKA` per pair (the default)
    cka_1024     the same on at most 1,024 real tokens per stack and step (`--cka_max_tokens 1024`)
    cka_authors  the reference: the authors' form, float64, `1 - sqrt(CKA)`, rows selected per pair

Timing: the variants take turns (one step each, round after round) so slow drift of the machine's load
hits them alike; the median of --steps timed rounds after --warmup rounds. Memory on the CPU: the
bytes autograd keeps for backward during one step (activations and the losses' saved tensors, each
storage once), each variant in a fresh subprocess; the process's resident size is no use here, as the
allocator keeps freed memory and the figures moved by ±100 MiB between identical runs. On a GPU: the
device's peak allocation during the variant's steps. `--memory_only` skips the timing. `--bf16` runs the models under bf16 autocast
(the Trainer's `bf16=True`); the losses stay in fp32.

    .venv/bin/python benchmarks/bench_step.py                       # both shapes (about 10 minutes here)
    .venv/bin/python benchmarks/bench_step.py --shapes bert-base --steps 3 --no_memory
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers

from ckadistill.config import DistillArguments
from ckadistill.layer_maps import evenly_spaced
from ckadistill.students import make_student
from ckadistill.trainer import DistillationTrainer
from machine import machine_line

VARIANTS = ("none", "mse_proj", "cka", "cka_1024", "cka_authors")
CAPS = {"cka_1024": 1024}  # variant -> --cka_max_tokens
SHAPES = {
    # teacher config, student (encoder, decoder) layers and width, batch, source and target lengths
    "bert-base": {"layers": (4, 0), "width": 384, "batch": 16, "source": 256, "target": 0},
    "bart-base": {"layers": (3, 3), "width": 384, "batch": 8, "source": 256, "target": 64},
    "bart-large": {"layers": (3, 3), "width": 512, "batch": 8, "source": 512, "target": 128},
}
TEACHER_DEPTH = {"bert-base": (12, 0), "bart-base": (6, 6), "bart-large": (12, 12)}


def authors_cka_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference form: centre in float64, `1 - ||XᵀY||_F / sqrt(||XᵀX||_F · ||YᵀY||_F)`."""
    x, y = x.double(), y.double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(x.T @ y)
    return 1.0 - cross / torch.sqrt(torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


class AuthorsTrainer(DistillationTrainer):
    """`cka_authors`: the same trainer with the reference loss in place of `cka_loss` per pair."""

    def _hidden_terms(self, states):
        losses = [authors_cka_loss(x, y).float() for x, y in states]
        return losses, [1.0 - loss.detach() for loss in losses]


def build_models(shape: str) -> tuple:
    """Random-weight teacher and slice-initialised student of one shape, with a batch of random tokens."""
    spec = SHAPES[shape]
    torch.manual_seed(0)
    if shape == "bert-base":
        teacher = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=5))
        student = make_student(teacher, num_layers=spec["layers"][0], hidden_size=spec["width"])
    else:
        large = shape == "bart-large"
        config = transformers.BartConfig(
            d_model=1024 if large else 768,
            encoder_layers=TEACHER_DEPTH[shape][0],
            decoder_layers=TEACHER_DEPTH[shape][1],
            encoder_attention_heads=16 if large else 12,
            decoder_attention_heads=16 if large else 12,
            encoder_ffn_dim=4096 if large else 3072,
            decoder_ffn_dim=4096 if large else 3072,
            max_position_embeddings=1024,
        )
        teacher = transformers.BartForConditionalGeneration(config)
        student = make_student(
            teacher,
            encoder_layers=spec["layers"][0],
            decoder_layers=spec["layers"][1],
            hidden_size=spec["width"],
        )
    vocab = teacher.config.vocab_size
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(5, vocab, (spec["batch"], spec["source"]), generator=g),
        "attention_mask": torch.ones(spec["batch"], spec["source"], dtype=torch.long),
    }
    batch["attention_mask"][: spec["batch"] // 2, spec["source"] * 3 // 4 :] = 0  # some padding
    if spec["target"]:
        batch["labels"] = torch.randint(5, vocab, (spec["batch"], spec["target"]), generator=g)
        batch["labels"][: spec["batch"] // 2, spec["target"] * 3 // 4 :] = -100
    else:
        batch["labels"] = torch.randint(0, 5, (spec["batch"],), generator=g)
    return teacher, student, batch


def build_trainer(
    variant: str, teacher, student, shape: str, output_dir: str, bf16: bool = False
) -> DistillationTrainer:
    spec = SHAPES[shape]
    (enc_t, dec_t), (enc_s, dec_s) = TEACHER_DEPTH[shape], spec["layers"]
    enc_pairs = [(0, 0), *evenly_spaced(enc_s, enc_t)]
    dec_pairs = [(0, 0), *evenly_spaced(dec_s, dec_t)] if dec_s else []
    hidden = variant != "none"
    distill_args = DistillArguments(
        hidden_loss="cka" if variant in ("cka_authors", *CAPS) else variant,
        cka_max_tokens=CAPS.get(variant),
        alpha_hidden=1.0 if hidden else 0.0,
        layer_map="uniform" if hidden else "none",
    )
    args = transformers.Seq2SeqTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=spec["batch"],
        learning_rate=1e-4,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
    )
    trainer_class = AuthorsTrainer if variant == "cka_authors" else DistillationTrainer
    trainer = trainer_class(
        model=student,
        args=args,
        teacher=teacher,
        distill_args=distill_args,
        layer_pairs=enc_pairs if hidden else (),
        decoder_layer_pairs=dec_pairs if hidden else (),
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is not run here
    return trainer


def one_step(trainer: DistillationTrainer, batch: dict) -> float:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()  # the clock stops when the device has finished
    return time.perf_counter() - start


def memory_worker(shape: str, variant: str) -> dict:
    """Bytes autograd keeps for the backward of one step of one variant: the activations and the loss's
    saved tensors, each storage counted once (`saved_tensors_hooks` sees every tensor saved for
    backward, custom functions' included). On a CPU this is the part of a step's memory that the
    variants change, and unlike the process's resident size it does not depend on what the allocator
    happens to keep cached."""
    teacher, student, batch = build_models(shape)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(variant, teacher, student, shape, tmp)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            one_step(trainer, batch)
    return {"peak_bytes": sum(storages.values())}


def timings(
    shape: str, variants: list[str], warmup: int, steps: int, bf16: bool
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Step times per variant, and on a GPU each variant's peak device memory (bytes)."""
    teacher, student, batch = build_models(shape)
    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, int] = {}
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: build_trainer(v, teacher, student, shape, tmp, bf16) for v in variants}
        for round_index in range(warmup + steps):
            for variant, trainer in trainers.items():
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                elapsed = one_step(trainer, batch)
                if cuda:
                    peaks[variant] = max(peaks.get(variant, 0), torch.cuda.max_memory_allocated())
                if round_index >= warmup:
                    times[variant].append(elapsed)
            print(f"  {shape} round {round_index + 1}/{warmup + steps} done", file=sys.stderr, flush=True)
    return times, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=1, help="Untimed rounds first.")
    parser.add_argument("--steps", type=int, default=5, help="Timed rounds; the median is reported.")
    parser.add_argument("--no_memory", action="store_true", help="Skip the peak-memory subprocesses.")
    parser.add_argument("--memory_only", action="store_true", help="Peak memory per variant, no timing.")
    parser.add_argument("--bf16", action="store_true", help="Models under bf16 autocast (GPU runs).")
    parser.add_argument("--memory_worker", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker)))
        return 0
    transformers.logging.set_verbosity_error()
    if "none" not in args.variants:
        args.variants.insert(0, "none")  # every ratio is to the plain-KD step

    print(machine_line())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    precision = "bf16 autocast (losses fp32)" if args.bf16 else "fp32"
    print(f"- {device}; median of {args.steps} timed steps after {args.warmup} warm-up, variants "
          f"interleaved; {precision}")  # fmt: skip
    print()
    print("| shape | hidden loss | step ms | tokens/s | ratio to none | MiB kept for backward (GPU: peak) |")
    print("|---|---|---:|---:|---:|---:|")
    started = time.perf_counter()
    for shape in args.shapes:
        if args.memory_only:
            times, peaks = {v: [float("nan")] for v in args.variants}, {}
        else:
            times, peaks = timings(shape, args.variants, args.warmup, args.steps, args.bf16)
        base = statistics.median(times["none"])
        spec = SHAPES[shape]
        tokens = spec["batch"] * (spec["source"] + spec["target"])
        for variant in args.variants:
            memory = "—"
            if variant in peaks:
                memory = f"{peaks[variant] / 2**20:.0f}"
            elif not args.no_memory:
                cmd = [sys.executable, __file__, "--memory_worker", shape, variant]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode == 0:
                    memory = f"{json.loads(done.stdout.splitlines()[-1])['peak_bytes'] / 2**20:.0f}"
                else:
                    memory = f"failed ({(done.stderr.strip().splitlines() or [''])[-1][:60]})"
            median = statistics.median(times[variant])
            print(
                f"| {shape} | {variant} | {1e3 * median:.0f} | {tokens / median:.0f} | {median / base:.3f} "
                f"| {memory} |",
                flush=True,
            )
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
