"""What a student gains at inference: size on disk and speed, teacher and students side by side.

Two parts, each on this CPU with the threads torch picks:

classification  the packaged all-MiniLM-L6-v2 with a 5-way head (the default job's teacher shape) against
                students built from it by `make_student` (2L × 128, the default; 4L × 192): parameters,
                bytes of `model.safetensors`, examples/s at batch 1 and at batch 32 (192 tokens each, the
                default job's length). Weights are the packaged ones plus fresh heads: speed does not
                depend on training.
generation      a bart-large-shaped teacher (12+12 layers, d1024, FFN 4096, random weights) against
                students sliced from it: 3+3 × d512 (FFN 2048), deep-encoder / shallow-decoder 6+2 and
                12+1 × d512, each with PyTorch's scaled-dot-product attention (the default) and with
                `eager` attention, and 3+3 with dynamic int8 linear layers (`torch.ao` dynamic
                quantisation). Latency of greedy `generate` at batch 1: a 256-token source and exactly 64
                new tokens (`min_new_tokens = max_new_tokens`), key/value cache on; median of --repeats
                runs after one warm-up, models taking turns.

    .venv/bin/python benchmarks/bench_inference.py                  # both parts (about 10 minutes here)
    .venv/bin/python benchmarks/bench_inference.py --parts generation --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from ckadistill.students import count_parameters, make_student
from machine import machine_line

SOURCE_TOKENS, NEW_TOKENS, CLASSIFY_TOKENS = 256, 64, 192


def disk_bytes(model) -> int:
    """Bytes of the safetensors weights `save_pretrained` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))


def median_time(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def int8(model):
    """Dynamic int8 linear layers (weights int8, activations quantised per batch)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantisation is deprecated in favour of torchao
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# ---------------------------------------------------------------------------------------------------


def classification(repeats: int) -> list[str]:
    from ckadistill.packaged import minilm_path

    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)
    models = {
        "teacher 6L × 384 (MiniLM)": teacher,
        "student 4L × 192": make_student(teacher, num_layers=4, hidden_size=192),
        "student 2L × 128 (default)": make_student(teacher, num_layers=2, hidden_size=128),
    }
    g = torch.Generator().manual_seed(0)
    batches = {
        size: torch.randint(1000, teacher.config.vocab_size, (size, CLASSIFY_TOKENS), generator=g)
        for size in (1, 32)
    }
    base_params = count_parameters(teacher)
    lines = [
        "| classification model | parameters | compression | safetensors MB | ex/s batch 1 | ex/s batch 32 | speed-up (batch 32) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rates: dict[str, dict[int, float]] = {}
    for name, model in models.items():
        model.eval()
        rates[name] = {}
        for size, ids in batches.items():
            with torch.inference_mode():
                seconds = median_time(lambda m=model, i=ids: m(input_ids=i), repeats)
            rates[name][size] = size / seconds
        params = count_parameters(model)
        first = next(iter(rates))
        lines.append(
            f"| {name} | {params / 1e6:.2f}M | {base_params / params:.2f}× | {disk_bytes(model) / 1e6:.1f} | "
            f"{rates[name][1]:.1f} | {rates[name][32]:.1f} | {rates[name][32] / rates[first][32]:.2f}× |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def generation(repeats: int) -> list[str]:
    torch.manual_seed(0)
    config = transformers.BartConfig(  # bart-large's shape
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
    )
    teacher = transformers.BartForConditionalGeneration(config)
    shapes = {"3+3 × d512": (3, 3), "6+2 × d512": (6, 2), "12+1 × d512": (12, 1)}
    models = {"teacher 12+12 × d1024": teacher}
    for name, (enc, dec) in shapes.items():
        models[f"student {name}"] = make_student(
            teacher, encoder_layers=enc, decoder_layers=dec, hidden_size=512, ffn_size=2048
        )
    models["student 3+3 × d512, int8"] = int8(make_student(teacher, encoder_layers=3, decoder_layers=3,
                                                           hidden_size=512, ffn_size=2048))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    source = torch.randint(5, config.vocab_size, (1, SOURCE_TOKENS), generator=g)
    settings = dict(
        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False, use_cache=True
    )
    variants = []  # (name, model, attention implementation)
    for name, model in models.items():
        variants.append((name, model, "sdpa"))
        if name in ("teacher 12+12 × d1024", "student 3+3 × d512"):
            variants.append((name, model, "eager"))
    base_params = count_parameters(teacher)
    times: dict[tuple[str, str], list[float]] = {(n, a): [] for n, _, a in variants}
    with torch.inference_mode():
        for round_index in range(repeats + 1):  # round 0 warms up
            for name, model, attention in variants:
                model.eval()
                if hasattr(model, "set_attn_implementation"):
                    model.set_attn_implementation(attention)
                start = time.perf_counter()
                out = model.generate(source, attention_mask=torch.ones_like(source), **settings)
                elapsed = time.perf_counter() - start
                assert out.shape[1] - 1 >= NEW_TOKENS, out.shape  # the decoder start token + new tokens
                if round_index:
                    times[(name, attention)].append(elapsed)
            print(f"  generation round {round_index}/{repeats} done", file=sys.stderr, flush=True)
    teacher_s = statistics.median(times[("teacher 12+12 × d1024", "sdpa")])
    lines = [
        "| generation model | attention | parameters | compression | safetensors MB | ms per example (64 new tokens) | speed-up vs teacher (sdpa) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, model, attention in variants:
        seconds = statistics.median(times[(name, attention)])
        int8_model = "int8" in name
        params = count_parameters(model) if not int8_model else count_parameters(models["student 3+3 × d512"])
        size = "—" if int8_model else f"{disk_bytes(model) / 1e6:.0f}"
        lines.append(
            f"| {name} | {attention} | {params / 1e6:.1f}M | {base_params / params:.2f}× | {size} | "
            f"{1e3 * seconds:.0f} | {teacher_s / seconds:.2f}× |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["classification", "generation"],
        choices=["classification", "generation"],
    )
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per model (median reported).")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    print(machine_line())
    started = time.perf_counter()
    for part in args.parts:
        print()
        print(
            "\n".join(classification(args.repeats) if part == "classification" else generation(args.repeats))
        )
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
