"""Training library: tokenizer, ChatML masks, data preparation, compliance measurement, a short
Ray Train run (2 CPU workers) whose adapter loads with peft, and the merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrr_ray import validate
from rrr_ray.data.records import DialogueRecord
from rrr_ray.format.chatml import IM_END, IM_START, render_chatml
from rrr_ray.paths import REPO

SEED = [REPO / "data/seed/seed_dialogues.json", REPO / "data/seed/curated_seed_dialogues"]

REPLY = "<react>*nods slowly*</react>\n<respond>That sounds hard.</respond>\n<reflect>They need room.</reflect>"
CONV = [
    {"role": "user", "content": "I lost my keys again."},
    {"role": "assistant", "content": REPLY},
    {"role": "user", "content": "And I was late."},
    {"role": "assistant", "content": REPLY.replace("hard", "stressful")},
]


@pytest.fixture(scope="module")
def tokenizer():
    from rrr_ray.data.convert import load_records
    from rrr_ray.training.data import tagged_records
    from rrr_ray.training.tokenizer import train_tokenizer

    recs, _ = tagged_records(load_records(SEED[:1]))
    return train_tokenizer([render_chatml([m.model_dump() for m in r.messages]) for r in recs], vocab_size=800)


def test_tokenizer_special_tokens_and_template(tokenizer):
    from rrr_ray.training.tokenizer import PAD_TOKEN

    assert tokenizer.convert_tokens_to_ids([IM_START, IM_END, PAD_TOKEN]) == [0, 1, 2]
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD_TOKEN
    text = tokenizer.apply_chat_template(CONV, tokenize=False)
    assert text == render_chatml(CONV)
    prompt = tokenizer.apply_chat_template(CONV[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == render_chatml(CONV[:1], add_generation_prompt=True)
    ids = tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == REPLY  # byte-level: lossless round trip


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_renders_like_render_chatml(tokenizer, add_generation_prompt):
    conv = [{"role": "system", "content": "You reply in the RRR format."}, *CONV,
            {"role": "user", "content": "Any advice?"}]
    for messages in (conv, conv[:3], CONV):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert text == render_chatml(messages, add_generation_prompt=add_generation_prompt)


def test_assistant_mask_covers_exactly_the_replies(tokenizer):
    from rrr_ray.training.data import tokenize_chatml

    row = tokenize_chatml(CONV, tokenizer)
    assert len(row["input_ids"]) == len(row["assistant_masks"])
    assert tokenizer.decode(row["input_ids"]) == render_chatml(CONV)
    masked = [t if m else None for t, m in zip(row["input_ids"], row["assistant_masks"])]
    spans, cur = [], []
    for t in masked + [None]:
        if t is None and cur:
            spans.append(tokenizer.decode(cur))
            cur = []
        elif t is not None:
            cur.append(t)
    assert spans == [CONV[1]["content"] + IM_END, CONV[3]["content"] + IM_END]
    # the same mask as the chat template's {% generation %} blocks
    hf = tokenizer.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert hf["input_ids"] == row["input_ids"]
    assert hf["assistant_masks"] == row["assistant_masks"]


def test_truncation_and_prefix_examples(tokenizer):
    from rrr_ray.training.data import conversation_examples, tokenize_chatml

    row = tokenize_chatml(CONV, tokenizer, max_length=10)
    assert len(row["input_ids"]) == 10 == len(row["assistant_masks"])
    rec = DialogueRecord.from_messages("c", CONV)
    exs = conversation_examples([rec], prefix_turns=2)
    assert [len(e) for e in exs] == [2, 4]  # prefix after turn 1, then the whole conversation
    assert all(e[-1]["role"] == "assistant" for e in exs)
    exs = conversation_examples([rec], prefix_turns=1, single_turns=True)
    assert exs[-1] == CONV[2:4] and [len(e) for e in exs] == [2, 4, 2]


def test_seed_preparation_tagged_untagged_and_split():
    from rrr_ray.data.convert import load_records
    from rrr_ray.training.data import section_documents, split_records, tagged_records, untagged_records

    records = load_records(SEED)
    assert len(records) == 60 and sum(r.num_turns for r in records) == 366
    tagged, dropped = tagged_records(records)
    assert len(tagged) + dropped == 60 and len(tagged) >= 55
    assert all(validate(t).valid for r in tagged for t in r.assistant_replies())
    plain = untagged_records(records)
    for r in plain:
        for t in r.assistant_replies():
            assert "<" not in t and ">" not in t and t.strip()
    docs = section_documents(tagged)
    assert docs and not any(validate(d).valid for d in docs)
    tr, va = split_records(tagged, 0.1, seed=0)
    assert len(va) == round(len(tagged) * 0.1) and not {r.conversation_id for r in tr} & {r.conversation_id for r in va}
    assert split_records(tagged, 0.1, seed=0)[1] == va


def test_load_records_errors(tmp_path):
    from rrr_ray.data.convert import load_hf_dataset, load_records

    with pytest.raises(FileNotFoundError):
        load_records([tmp_path / "missing.jsonl"])
    with pytest.raises(FileNotFoundError):
        load_hf_dataset(str(tmp_path / "nope"))


def test_load_records_reads_hf_folders_and_checks_ids_on_request(tmp_path):
    from rrr_ray.data.convert import load_records, to_dataset

    records = load_records(SEED[1:])[:3]
    to_dataset(records).save_to_disk(str(tmp_path / "hf"))
    assert load_records([tmp_path / "hf"]) == records
    assert len(load_records([tmp_path / "hf", tmp_path / "hf"])) == 6
    with pytest.raises(ValueError, match="duplicated conversation ids"):
        load_records([tmp_path / "hf", tmp_path / "hf"], unique_ids=True)


def test_train_lora_options_come_from_the_config():
    from jobs.train_lora import config_from_args, parse_args
    from rrr_ray.training.sft import LoraSettings, SFTJobConfig

    required = ["--base-model", "org/model", "--output-dir", "out/x"]
    cfg = config_from_args(parse_args(required))
    expected = SFTJobConfig(base_model="org/model", output_dir=str(Path("out/x").resolve()))
    assert cfg.model_dump(exclude={"dataset"}) == expected.model_dump(exclude={"dataset"})
    assert [Path(d).name for d in cfg.dataset] == [Path(d).name for d in expected.dataset]
    cfg = config_from_args(parse_args(required + [
        "--lr", "0.01", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--target-modules", "q_proj",
        "--modules-to-save", "lm_head", "--no-single-turns", "--use-gpu", "no", "--eval-prompts", "",
        "--method", "full", "--num-workers", "3"]))
    assert (cfg.learning_rate, cfg.single_turns, cfg.use_gpu, cfg.eval_prompts, cfg.method, cfg.num_workers) == (
        0.01, False, False, None, "full", 3)
    assert cfg.lora == LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], modules_to_save=["lm_head"])
    assert parse_args(required + ["--use-gpu", "yes"]).use_gpu is True
    with pytest.raises(SystemExit):
        parse_args(required + ["--use-gpu", "maybe"])


def test_measure_compliance_counts_strictly():
    from rrr_ray.evaluation.compliance import measure_compliance

    replies = {"a": REPLY, "b": "just words", "c": REPLY.replace("</respond>", "")}
    res = measure_compliance(lambda ps: [replies[p] for p in ps],
                             [{"id": "1", "category": "general", "prompt": "a"},
                              {"id": "2", "category": "adversarial", "prompt": "b"},
                              {"id": "3", "category": "adversarial", "prompt": "c"}], samples_per_prompt=2)
    assert res["n"] == 6 and res["valid"] == 2
    assert res["compliance"] == pytest.approx(1 / 3)
    assert res["repaired_compliance"] == pytest.approx(2 / 3)  # the missing closing tag is repairable
    assert res["by_category"]["general"]["compliance"] == 1.0
    assert res["by_category"]["adversarial"]["compliance"] == 0.0
    assert "missing_tag" in res["errors"]
    with pytest.raises(ValueError):
        measure_compliance(lambda ps: [], ["x"])


def test_compliance_is_scored_in_one_place_for_generated_and_given_replies():
    from rrr_ray.evaluation.compliance import measure_compliance, reply_compliance, score_replies

    assert reply_compliance(REPLY) == (True, [])
    ok, codes = reply_compliance("just words")
    assert not ok and "missing_tag" in codes and codes == sorted(set(codes))
    prompts = [{"id": "1", "category": "general", "prompt": "a"}, {"id": "2", "category": "general", "prompt": "b"}]
    replies = {"a": REPLY, "b": "just words"}
    given = score_replies(prompts, [replies["a"], replies["b"]])
    assert given == measure_compliance(lambda ps: [replies[p] for p in ps], prompts)
    assert given["compliance"] == 0.5 and given["prompts"] == 2
    with pytest.raises(ValueError, match="1 replies for 2 prompts"):
        score_replies(prompts, [REPLY])


def test_eval_prompts_file_is_held_out():
    from rrr_ray.data.convert import load_records
    from rrr_ray.data.prompts import CATEGORIES, load_prompts

    prompts = load_prompts(REPO / "data/eval_prompts.jsonl")
    assert len(prompts) >= 40 and len({p["id"] for p in prompts}) == len(prompts)
    for c in CATEGORIES:
        assert sum(p["category"] == c for p in prompts) >= 8
    seen = {m.content.strip().lower() for r in load_records(SEED) for m in r.messages}
    assert not any(p["prompt"].strip().lower() in seen for p in prompts)


# -- a real (tiny) model through Ray Train, peft and the merge -------------------------------

@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer):
    from rrr_ray.training.modeling import TinyModelConfig, build_mistral, save_model_folder

    out = tmp_path_factory.mktemp("tiny_base")
    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=512)
    save_model_folder(build_mistral(cfg, tokenizer), tokenizer, out, "float32")
    return out


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from rrr_ray.data.convert import load_records, to_dataset

    out = tmp_path_factory.mktemp("ds") / "hf"
    to_dataset(load_records(SEED[1:])[:6]).save_to_disk(str(out))
    return out


_RUN_IN_OWN_RAY = """
import json, sys
from rrr_ray.training.finetune import fine_tune
from rrr_ray.training.local_ray import init_local_ray
from rrr_ray.training.sft import SFTJobConfig
init_local_ray(2)
print("SUMMARY " + json.dumps(fine_tune(SFTJobConfig.model_validate_json(sys.argv[1]))))
"""


@pytest.fixture(scope="module")
def ray_train_run(tmp_path_factory, tiny_base, tiny_dataset):
    """A real Ray Train run with 2 CPU workers, in a process (and Ray cluster) of its own: the
    test run's Serve stack holds CPUs in this process's cluster, which 2 workers would wait on."""
    import subprocess
    import sys

    from rrr_ray.training.sft import LoraSettings, SFTJobConfig

    out = tmp_path_factory.mktemp("lora_run")
    cfg = SFTJobConfig(base_model=str(tiny_base), dataset=[str(tiny_dataset)], output_dir=str(out),
                       num_workers=2, use_gpu=False, max_steps=2, save_steps=1, batch_size=2,
                       max_length=256, val_prompts=1, val_samples=1, max_new_tokens=8, eval_prompts=None,
                       lora=LoraSettings(r=4, alpha=8, modules_to_save=["embed_tokens", "lm_head"]))
    proc = subprocess.run([sys.executable, "-c", _RUN_IN_OWN_RAY, cfg.model_dump_json()], cwd=str(REPO),
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    assert "Failed to query Ray Train Controller" not in proc.stdout + proc.stderr  # no warning per second
    return out, json.loads(lines[-1][len("SUMMARY "):])


@pytest.mark.slow
def test_ray_train_stops_on_every_worker_once_validation_compliance_is_reached(tmp_path, tiny_dataset):
    """``stop_at_compliance``: rank 0 measures, both workers stop at that checkpoint (no hang)."""
    import subprocess
    import sys

    from rrr_ray.training.sft import LoraSettings, SFTJobConfig

    cfg = SFTJobConfig(base_model=str(REPO / "models" / "rrr-tiny"), dataset=[str(tiny_dataset)],
                       output_dir=str(tmp_path), num_workers=2, use_gpu=False, max_steps=6, save_steps=1,
                       batch_size=2, max_length=256, val_prompts=2, val_samples=2, max_new_tokens=160,
                       eval_prompts=None, stop_at_compliance=0.5, lora=LoraSettings(r=4, alpha=8))
    proc = subprocess.run([sys.executable, "-c", _RUN_IN_OWN_RAY, cfg.model_dump_json()], cwd=str(REPO),
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    summary = json.loads(lines[-1][len("SUMMARY "):])
    assert [c["step"] for c in summary["checkpoints"]] == [1]  # of 6
    assert summary["chosen_step"] == 1 and summary["chosen_val_compliance"] >= 0.5


@pytest.mark.slow
def test_ray_train_two_workers_checkpoint_adapter_loads(ray_train_run, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, summary = ray_train_run
    assert summary["num_workers"] == 2 and summary["backend"] == "peft"
    assert len(summary["checkpoints"]) == 2
    assert all(c["val_compliance"] is not None for c in summary["checkpoints"])
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and set(cfg["modules_to_save"]) >= {"embed_tokens", "lm_head"}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(adapter))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert json.loads((out / "train_result.json").read_text())["chosen_step"] in (1, 2)


@pytest.mark.slow
def test_merge_output_is_a_valid_model_folder(ray_train_run, tiny_base, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rrr_ray.training.merge import merge_adapter

    out, _ = ray_train_run
    merged = merge_adapter(tiny_base, out / "adapter", tmp_path / "merged", "bfloat16")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (merged / f).exists(), f
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["architectures"] == ["MistralForCausalLM"]
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    tok = AutoTokenizer.from_pretrained(str(merged))
    assert not any("lora" in n for n, _ in model.named_parameters())
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_job_clis_reject_bad_input(tmp_path):
    import subprocess
    import sys

    for args in (["-m", "jobs.train_lora", "--base-model", str(tmp_path / "nope"), "--output-dir", str(tmp_path)],
                 ["-m", "jobs.merge_lora", "--base-model", str(tmp_path), "--adapter", str(tmp_path / "x"),
                  "--output-dir", str(tmp_path / "o")]):
        r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "error:" in r.stderr, r.stderr[-500:]
    r = subprocess.run([sys.executable, "-m", "jobs.build_tiny_model", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="the unsloth backend needs a CUDA GPU (this machine has none)")
def test_unsloth_backend_is_selected_on_cuda():  # pragma: no cover - GPU only
    import importlib.util

    from rrr_ray.training.sft import resolve_backend

    expected = "unsloth" if importlib.util.find_spec("unsloth") else "peft"
    assert resolve_backend("auto") == expected


def test_unsloth_backend_refused_without_cuda():
    from rrr_ray.training.sft import resolve_backend

    if _cuda():
        pytest.skip("CUDA present")
    assert resolve_backend("auto") == "peft"
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_backend("unsloth")


@pytest.mark.parametrize("job, argv, message", [
    ("jobs.train_lora", ["--base-model", "models/rrr-tiny-base", "--output-dir", "out/x", "--lora-r", "0"],
     "--lora-r: Input should be greater than or equal to 1"),
    ("jobs.train_lora", ["--base-model", "models/rrr-tiny-base", "--output-dir", "out/x", "--lr", "-1"],
     "--lr: Input should be greater than 0"),
    ("jobs.build_base_model", ["--output-dir", "out/x", "--vocab-size", "0"],
     "--vocab-size: Input should be greater than or equal to 300"),
    ("jobs.build_tiny_model", ["--models-dir", "out/x", "--lora-r", "0"],
     "--lora-r: Input should be greater than or equal to 1"),
])
def test_a_value_the_config_refuses_is_a_one_line_error(job, argv, message):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", job, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_checkpoint_choice_is_by_content_among_compliant_checkpoints():
    from rrr_ray.training.selection import choose_checkpoint

    curve = [{"step": 20, "val_compliance": 1.0, "eval_loss": 0.80, "val_meteor": 0.10},
             {"step": 40, "val_compliance": 0.95, "eval_loss": 0.60, "val_meteor": 0.20},
             {"step": 60, "val_compliance": 0.99, "eval_loss": 0.65, "val_meteor": 0.15},
             {"step": 80, "val_compliance": 1.0, "eval_loss": 0.70, "val_meteor": 0.18}]
    assert choose_checkpoint(curve, "eval_loss", 0.98) == 2  # step 40 has the lowest loss but fails the floor
    assert choose_checkpoint(curve, "val_meteor", 0.98) == 3
    assert choose_checkpoint(curve, "compliance") == 0  # earliest of the most compliant
    assert choose_checkpoint(curve, "eval_loss", 1.0) == 3
    # nothing reaches the floor: the most compliant; nothing measured: the last
    assert choose_checkpoint([{"val_compliance": 0.5}, {"val_compliance": 0.7}], "eval_loss") == 1
    assert choose_checkpoint([{"step": 1}, {"step": 2}], "eval_loss") == 1


def test_validation_prompts_carry_the_reply_that_followed_as_reference():
    from rrr_ray.data.records import DialogueRecord
    from rrr_ray.training.data import first_user_prompts

    rec = DialogueRecord.model_validate({"conversation_id": "c1", "num_turns": 1, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "<react>*a*</react><respond>b</respond><reflect>c</reflect>"},
        {"role": "user", "content": "bye"}]})
    items = first_user_prompts([rec], all_turns=True)
    assert items[0]["reference"].startswith("<react>") and "reference" not in items[1]


def test_measure_checkpoint_scores_compliance_and_content():
    from rrr_ray.training.selection import curve_table, measure_checkpoint

    good = "<react>*nods*</react><respond>That sounds hard, I am here.</respond><reflect>They need support.</reflect>"
    prompts = [{"prompt": "p1", "reference": good}, {"prompt": "p2", "reference": good}]
    replies = iter([good, good, "no tags at all", good])
    scores = measure_checkpoint(lambda ps: [next(replies) for _ in ps], prompts, samples=2)
    assert scores["val_compliance"] == 0.75
    if scores["val_meteor"] is not None:  # WordNet installed
        assert 0 < scores["val_meteor"] <= 1
    table = curve_table([{"step": 20, **scores, "eval_loss": 0.5, "loss": 0.7}], chosen_step=20)
    assert "| **20** |" in table and "75.0%" in table
