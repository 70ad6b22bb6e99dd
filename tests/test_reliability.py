"""Reliability of a distillation run: a non-finite loss stops it cleanly, a half-written checkpoint is
never resumed from, and a run killed mid-epoch and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import ckadistill.trainer as trainer_module
from ckadistill.commands.distill import main
from ckadistill.runs import last_complete_checkpoint
from test_distill_cli import SHAPES, distill_argv, log_history

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from conftest import build_tokenizer
    from test_distill_cli import TOPICS, save_model, tiny_bert

    tok = build_tokenizer()
    return save_model(tiny_bert(tok, labels=sorted(set(TOPICS))), tok, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    from test_distill_cli import topic_rows, write_csv

    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", ["text", "label"], topic_rows())


def test_a_nan_stops_the_run_naming_the_layer_pair_and_step_and_keeps_the_last_checkpoint(
    teacher_dir, train_csv, tmp_path, monkeypatch, capsys
):
    calls = {"n": 0}
    real = trainer_module.cka_loss

    def poisoned(x, y, **kwargs):  # three pairs a step: the 11th call is step 4's pair enc_1_2
        calls["n"] += 1
        loss = real(x, y, **kwargs)
        return loss * float("nan") if calls["n"] == 11 else loss

    monkeypatch.setattr(trainer_module, "cka_loss", poisoned)
    out = tmp_path / "out"
    argv = [
        *distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]),
        "--max_steps",
        "6",
        "--save_steps",
        "2",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "not finite at step 4" in err and "hidden pair enc_1_2 = nan" in err
    assert "task = " in err and "kd = " in err  # the finite components, for comparison
    assert str(out / "checkpoint-2") in err and "--resume_from_checkpoint true" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()  # no student saved from the bad state


def test_off_switch_lets_a_nan_through(teacher_dir, train_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "cka_loss", lambda x, y, **kw: x.float().sum() * float("nan"))
    out = tmp_path / "out"
    argv = [*distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]), "--stop_on_nan", "false"]
    assert main(argv) == 0


def test_resume_skips_a_half_written_checkpoint(teacher_dir, train_csv, tmp_path, capsys):
    out = tmp_path / "out"
    base = [*distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]), "--save_steps", "2"]
    assert main([*base, "--max_steps", "4"]) == 0
    # As if killed while saving: checkpoint-4's state file cut short, checkpoint-6 barely started.
    state = out / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    (out / "checkpoint-6").mkdir()
    (out / "checkpoint-6" / "model.safetensors").write_bytes(b"\0" * 10)
    assert last_complete_checkpoint(out) == out / "checkpoint-2"
    assert main([*base, "--max_steps", "6", "--resume_from_checkpoint", "true"]) == 0
    steps = [e["step"] for e in log_history(out) if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 redone from checkpoint-2


def test_resume_without_a_complete_checkpoint_is_refused(teacher_dir, train_csv, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    argv = [*distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]), "--resume_from_checkpoint", "true"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "--resume_from_checkpoint" in err


def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(
    teacher_dir, train_csv, tmp_path
):
    def command(out, *extra):
        argv = [*distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]), "--cache_teacher", "true"]
        argv += ["--max_steps", "40", "--save_steps", "5", "--per_device_train_batch_size", "4", *extra]
        return [sys.executable, "-m", "ckadistill.cli", "distill", *argv]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    straight = tmp_path / "straight"
    done = subprocess.run(command(straight), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        found = last_complete_checkpoint(killed) if killed.is_dir() else None
        if found is not None and int(found.name.split("-")[1]) >= 10:
            os.kill(process.pid, signal.SIGKILL)  # mid-epoch: 40 steps of 4 rows over 40 rows = 4 epochs
            break
        time.sleep(0.01)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()
    resumed = subprocess.run(
        command(killed, "--resume_from_checkpoint", "true"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    steps = json.loads((killed / "trainer_state.json").read_text())["global_step"]
    assert steps == 40


def test_a_folder_holding_files_is_refused_before_any_work_and_left_untouched(
    teacher_dir, train_csv, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    argv = distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds files (notes.txt)" in err and "--overwrite_output_dir true" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main([*argv, "--overwrite_output_dir", "true"]) == 0  # written into; nothing else deleted
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine" and (out / "model.safetensors").is_file()


def test_make_student_and_cka_map_refuse_a_taken_output_and_a_folder_without_weights(
    teacher_dir, train_csv, tmp_path, capsys
):
    from ckadistill.commands.cka_map import main as cka_map_main
    from ckadistill.commands.make_student import main as make_student_main

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x", encoding="utf-8")
    empty_model = tmp_path / "no_weights"
    empty_model.mkdir()
    (empty_model / "config.json").write_text("{}", encoding="utf-8")
    student = ["--layers", "2", "--hidden-size", "16"]
    assert make_student_main(["--teacher", str(teacher_dir), "--output", str(taken), *student]) == 2
    assert "already holds files (keep.txt)" in capsys.readouterr().err
    assert make_student_main(["--teacher", str(empty_model), "--output", str(tmp_path / "s"), *student]) == 2
    assert "holds no weights" in capsys.readouterr().err
    maps = ["--data", str(train_csv), "--output", str(taken)]
    assert cka_map_main(["--teacher", str(teacher_dir), "--student", str(teacher_dir), *maps]) == 2
    assert "--overwrite-output-dir" in capsys.readouterr().err
    assert cka_map_main(["--teacher", str(empty_model), "--student", str(teacher_dir), *maps]) == 2
    assert "holds no weights" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_distill_refuses_a_teacher_without_weights_or_of_an_unknown_family(train_csv, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import build_tokenizer

    tok = build_tokenizer()
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}", encoding="utf-8")
    argv = distill_argv(no_weights, train_csv, tmp_path / "out", *SHAPES["cka"])
    assert main(argv) == 2
    assert "--teacher" in (err := capsys.readouterr().err) and "holds no weights" in err
    gpt = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=len(tok))).save_pretrained(gpt)
    tok.save_pretrained(gpt)
    assert main(distill_argv(gpt, train_csv, tmp_path / "out", *SHAPES["cka"])) == 2
    assert "model type 'gpt2' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_quickstart_refuses_a_folder_of_another_kind(tmp_path, capsys):
    from ckadistill.commands.quickstart import main as quickstart_main

    (tmp_path / "thesis.tex").write_text("x", encoding="utf-8")
    assert quickstart_main(["--output_dir", str(tmp_path), "--fast"]) == 2
    assert "already holds files of another kind (thesis.tex)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]
