"""Two-process data-parallel distillation through torchrun and `accelerate launch` (gloo on the CPU), as
users launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


# DeepSpeed through the configs in configs/accelerate/, as users launch it (two CPU processes: DeepSpeed
# picks its CPU accelerator, gloo underneath). Runs where deepspeed is installed; `make test` does not
# need it. The script also writes, after training, what each process holds as its teacher.
TEACHER_PROBE = """
import json
import torch.distributed as dist
from ckadistill.trainer import DistillationTrainer

_train = DistillationTrainer.train

def train(self, *args, **kwargs):
    result = _train(self, *args, **kwargs)
    params = list(self.teacher.parameters())
    info = {
        "class": type(self.teacher).__name__,
        "numel": sum(p.numel() for p in params),
        "partitioned": any(hasattr(p, "ds_id") for p in params),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "training": self.teacher.training,
        "requires_grad": any(p.requires_grad for p in params),
    }
    with open(f"{self.args.output_dir}/teacher_rank{dist.get_rank()}.json", "w") as f:
        json.dump(info, f)
    return result

DistillationTrainer.train = train
"""
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def distill_flags(teacher, train, out) -> list[str]:
    return [
        "--teacher", str(teacher), "--train_file", str(train), "--output_dir", str(out),
        "--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2",
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true", "--ddp_backend", "gloo",
        "--disable_tqdm", "true", "--max_length", "24",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def distillation(tmp_path_factory):
    """A teacher, training data, the probing script, and the student plain data parallelism trains."""
    pytest.importorskip("deepspeed")
    root = tmp_path_factory.mktemp("deepspeed")
    tok = build_tokenizer()
    teacher = save_model(tiny_bert(tok, labels=sorted(set(TOPICS))), tok, root / "teacher")
    train = write_csv(root / "train.csv", ["text", "label"], topic_rows())
    script = root / "run.py"
    script.write_text(TEACHER_PROBE + RANK_DUMP, encoding="utf-8")
    out = root / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29750",
        str(script), *distill_flags(teacher, train, out),
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return teacher, train, script, load_file(out / "model.safetensors")


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}


def launch_deepspeed(
    config: str, port: int, script, flags: list[str], processes: int = 2
) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--num_processes", str(processes), "--main_process_port", str(port), str(script), *flags,
    ]  # fmt: skip
    # The config names its DeepSpeed JSON relative to the repository root, where users launch from.
    return subprocess.run(
        command, env=ENV, capture_output=True, text=True, timeout=300, cwd=CONFIGS.parents[1]
    )


@pytest.mark.parametrize(
    ("config", "port", "extra", "dtype"),
    [
        ("deepspeed_zero3.yaml", 29751, [], "torch.float32"),
        ("deepspeed_zero2.yaml", 29752, ["--bf16", "true"], "torch.bfloat16"),
    ],
)
def test_deepspeed_keeps_the_teacher_whole(config, port, extra, dtype, distillation, tmp_path):
    """ZeRO-3 partitions every model transformers loads once its config is live: without
    `whole_models` the slice initialisation reads empty teacher tensors and the run fails. Here each
    process ends with a whole, frozen teacher in the engine's dtype, and (in fp32) the student that
    plain data parallelism trains."""
    teacher, train, script, ddp_student = distillation
    out = tmp_path / "student"
    done = launch_deepspeed(config, port, script, [*distill_flags(teacher, train, out), *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    whole = sum(t.numel() for t in load_file(teacher / "model.safetensors").values())
    for rank in range(2):
        info = json.loads((out / f"teacher_rank{rank}.json").read_text())
        assert info == {
            "class": "BertForSequenceClassification",
            "numel": whole,
            "partitioned": False,
            "dtypes": [dtype],
            "training": False,
            "requires_grad": False,
        }
    logs = json.loads((out / "rank0_logs.json").read_text())
    assert len(logs) == 4 and all(0 <= entry["cka/enc_2_4"] <= 1 for entry in logs)
    student = load_file(out / "model.safetensors")  # gathered whole on save
    assert student.keys() == ddp_student.keys()
    if dtype == "torch.float32":
        for key, tensor in ddp_student.items():
            assert torch.allclose(student[key], tensor, atol=1e-6), key


def test_deepspeed_refuses_mse_proj_before_training(distillation, tmp_path):
    teacher, train, script, _ = distillation
    flags = [*distill_flags(teacher, train, tmp_path / "student"), "--hidden_loss", "mse_proj"]
    done = launch_deepspeed("deepspeed_zero2.yaml", 29753, script, flags, processes=1)
    assert done.returncode != 0
    assert "--hidden_loss mse_proj trains projections that live outside the student" in done.stderr
