"""Two-process data-parallel distillation through torchrun and `accelerate launch` (gloo on the CPU), as
users launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from conftest import build_tokenizer
from test_distill_cli import TOPICS, save_model, tiny_bert, topic_rows, write_csv


def test_torchrun_two_processes(tmp_path):
    tok = build_tokenizer()
    teacher = save_model(tiny_bert(tok, labels=sorted(set(TOPICS))), tok, tmp_path / "teacher")
    train = write_csv(tmp_path / "train.csv", ["text", "label"], topic_rows())
    out = tmp_path / "student"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
        "-m", "ckadistill.cli", "distill",
        "--teacher", str(teacher), "--train_file", str(train), "--output_dir", str(out),
        "--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2",
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true", "--ddp_backend", "gloo",
        "--disable_tqdm", "true", "--max_length", "24", "--cache_teacher", "true",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    logs = [entry for entry in state["log_history"] if "loss/hidden" in entry]
    assert len(logs) == 4 and all(0 <= entry["cka/enc_2_4"] <= 1 for entry in logs)
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 2


# A distillation launched as users launch it, with a callback that writes what each process ends with:
# the student's weights, the last optimiser group (the mse_proj projections when there are some) and
# the logged CKA.
RANK_DUMP = """
import json, sys
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import TrainerCallback
from ckadistill.commands.distill import parse
from ckadistill.tasks.classification import run_distill

class Dump(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        rank = dist.get_rank()
        tensors = {"student." + k: v.detach().contiguous() for k, v in model.state_dict().items()}
        for i, p in enumerate(optimizer.param_groups[-1]["params"]):
            tensors[f"last_group.{i}"] = p.detach().clone()
        save_file(tensors, f"{args.output_dir}/rank{rank}.safetensors")
        logs = [e for e in state.log_history if "cka/enc_2_4" in e]
        with open(f"{args.output_dir}/rank{rank}_logs.json", "w") as f:
            json.dump(logs, f)

model_args, data_args, distill_args, training_args, _ = parse(sys.argv[1:])
run_distill(model_args, data_args, distill_args, training_args, callbacks=[Dump()])
"""


@pytest.mark.parametrize(
    ("launcher", "loss"),
    [
        ("torchrun", ["--hidden_loss", "cka", "--cka_scope", "global"]),
        ("accelerate", ["--hidden_loss", "mse_proj"]),
    ],
)
def test_both_processes_end_with_the_same_student(launcher, loss, tmp_path):
    tok = build_tokenizer()
    teacher = save_model(tiny_bert(tok, labels=sorted(set(TOPICS))), tok, tmp_path / "teacher")
    train = write_csv(tmp_path / "train.csv", ["text", "label"], topic_rows())
    out = tmp_path / "student"
    script = tmp_path / "run.py"
    script.write_text(RANK_DUMP, encoding="utf-8")
    port = str(29740 + (launcher == "accelerate"))
    launch = {
        "torchrun": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
        ],
        "accelerate": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            port,
        ],
    }[launcher]
    command = [
        *launch, str(script),
        "--teacher", str(teacher), "--train_file", str(train), "--output_dir", str(out),
        "--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2",
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true", "--ddp_backend", "gloo",
        "--disable_tqdm", "true", "--max_length", "24", *loss,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(out / f"rank{r}.safetensors") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    if "mse_proj" in loss:  # the projections trained (moved from their start) and agree across processes
        assert any(key.startswith("last_group.") for key in ranks[0])
    logs = [json.loads((out / f"rank{r}_logs.json").read_text()) for r in range(2)]
    assert len(logs[0]) == 4 and logs[0] == logs[1]
