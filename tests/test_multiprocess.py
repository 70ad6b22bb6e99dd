"""Two-process data-parallel distillation through torchrun (gloo on the CPU), as users launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
