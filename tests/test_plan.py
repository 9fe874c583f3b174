"""The run planner (mini_qwen_plan.py, mini_qwen/plan.py, mini_qwen/plan_memory.py), checked against real counts:
the training state against the real model's parameters and a real optimizer's state, activations against the
bytes autograd saves on CPU, the peak against the GPU figures this project measured, and the verdicts the
original recipe, a T4 and the demo recipes must get; the same for LoRA runs (--use_peft: the adapter's
parameters against a real peft model's, the frozen model's activations against autograd's count). Bad input
ends in one `error:` line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, cli_error

import mini_qwen_plan
from mini_qwen import stages
from mini_qwen.cli import parse_args
from mini_qwen.errors import MiniQwenError, run_main
from mini_qwen.hardware import GPUS, find_gpu
from mini_qwen.lora import (
    LoraArguments,
    block_linear_names,
    check_lora_args,
    checkpoint_meta_model,
    lora_setup,
    peft_config,
)
from mini_qwen.model import PresetArguments, build_config, model_dtype
from mini_qwen.plan import build_setup, lora_adapter
from mini_qwen.plan_memory import GIB, Params, Setup, activation_bytes, meta_model, training_state

# The GPU figures of bench/RESULTS.md 4.1 ("One GPU, measured", one H200, 2026-11-30): the 1b preset,
# PT on mini_data/pt, batch 8 x 1024, bf16 weights + bf16 AdamW (--pure_bf16), SDPA, gradient accumulation 1;
# torch.cuda.max_memory_allocated / 2**30 (bench/gpu_check.py reports GiB as "GB").
H200_PT_PEAK_GIB = 43.7
H200_PT_CHUNKED_LOSS_PEAK_GIB = 31.9


def plan(tmp_path, stage: str, *flags: str) -> dict:
    """The plan mini_qwen_plan.py makes (and writes) for `flags`."""
    out = tmp_path / "plan.json"
    result = mini_qwen_plan.main([stage, *flags, "--out", str(out)])
    assert json.loads(out.read_text())["memory"]["fits"] == result["memory"]["fits"]
    return result


# ---------------------------------------------------------------- weights, gradients, optimizer state

RECIPES = {  # the precision recipes a stage trains with, as flags on a GPU that has them
    "fp32 master + bf16 autocast": ("H100", []),
    "bf16 weights + bf16 AdamW": ("H100", ["--pure_bf16", "true"]),
    "bf16 weights + Kahan AdamW": ("H100", ["--pure_bf16", "true", "--kahan_summation", "true"]),
    "fp32 master + fp16 autocast": ("T4", []),
}


@pytest.mark.parametrize("preset", ["tiny", "1b"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_training_state_is_the_real_models_parameters_and_optimizer_state(preset, recipe):
    gpu, flags = RECIPES[recipe]
    roles = mini_qwen_plan.stage_arguments("pt")
    parsed = parse_args((*roles.values(), mini_qwen_plan.PlanArguments),
                        ["--gpu", gpu, "--model_preset", preset, *flags], gpu_flag="gpu")
    args = dict(zip(roles, parsed))
    config = build_config(args["preset"])
    setup = build_setup("pt", args, config, Params.of(meta_model(config)), 1, None, {"trained share": 1.0})
    planned = training_state(setup)

    # The real thing: the model in the dtype the stage loads it in, its gradients, and the optimizer the stage
    # would build, stepped once on the meta device (shapes and dtypes only).
    model = meta_model(config, model_dtype(args["training"], args["model"].pure_bf16, on_gpu=True))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    if args["model"].kahan_summation:
        from optimi import AdamW

        optimizer = AdamW(params, lr=1e-4, kahan_sum=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    assert planned["weights"] == sum(p.numel() * p.element_size() for p in params)
    assert planned["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert planned["optimizer state"] == state


# ---------------------------------------------------------------- activations against autograd's own count

def saved_bytes(model, ids, position_ids, autocast: bool) -> tuple[int, int]:
    """(bytes of the tensors autograd saves in the body's forward, with the loss too): each storage once,
    the parameters' own storages not at all (they are the weights)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, position_ids=position_ids, use_cache=False)
        body = sum(seen.values())
        model.loss_function(out.logits, ids, vocab_size=model.config.vocab_size)  # what model(labels=...) adds
    return body, sum(seen.values())


@pytest.fixture(scope="module")
def cpu_models():
    """Real models on CPU, one per (shape, attention), reused: the tiny preset and 2 layers of the 1b preset."""
    from transformers import AutoModelForCausalLM

    cache = {}

    def get(shape: str, attention: str):
        if (shape, attention) not in cache:
            config = build_config(PresetArguments(model_preset="tiny") if shape == "tiny"
                                  else PresetArguments(model_preset="1b", num_hidden_layers=2))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
            model = model.to_empty(device="cpu")
            with torch.no_grad():  # the values do not change what is saved; random init of 156M weights is slow
                for p in model.parameters():
                    p.fill_(0.01)
            cache[(shape, attention)] = model.train()
        return cache[(shape, attention)]

    return get


# Both models, two block sizes (one of packed documents: a dense mask under SDPA), checkpointing on and off, eager and
# SDPA, in fp32; and the GPU recipes' dtypes (bf16 weights, bf16 autocast over fp32) on the 1b-width model.
CASES = [(shape, block, packing, checkpointing, attention, "fp32")
         for shape in ("tiny", "1b-width, 2 layers") for block, packing in ((64, "concat"), (128, "documents"))
         for checkpointing in (False, True) for attention in ("eager", "sdpa")]
CASES += [("1b-width, 2 layers", 128, "documents", checkpointing, "sdpa", precision)
          for checkpointing in (False, True) for precision in ("bf16", "autocast")]


@pytest.mark.parametrize("shape, block, packing, checkpointing, attention, precision", CASES)
def test_activation_bytes_match_what_autograd_saves(cpu_models, shape, block, packing, checkpointing, attention,
                                                    precision):
    model = cpu_models(shape, attention)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    model.activation_checkpointing_enable() if checkpointing else model.activation_checkpointing_disable()
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, block))
    positions = torch.arange(block)[None]
    if packing == "documents":  # two documents in the block: position ids restart, as PT's blocks have them
        positions[:, block // 3:] -= block // 3
    try:
        body, total = saved_bytes(model, ids, positions, autocast=precision == "autocast")
    finally:
        model.to(torch.float32).activation_checkpointing_disable()

    setup = Setup(model.config, Params.of(model), weights="bf16" if precision == "bf16" else "fp32",
                  autocast="bf16" if precision == "autocast" else None, batch=1, seq_len=block,
                  mask="rows" if packing == "documents" or attention == "eager" else None, attention=attention,
                  checkpointing=checkpointing)
    parts = activation_bytes(setup)
    planned_total = sum(parts.values())
    planned_body = planned_total - parts["loss"]
    assert abs(planned_body / body - 1) < 0.15, (planned_body, body)
    assert abs(planned_total / total - 1) < 0.15, (planned_total, total)


# ---------------------------------------------------------------- against the GPU measurements

@pytest.mark.parametrize("flags, measured", [([], H200_PT_PEAK_GIB),
                                             (["--chunked_loss", "true"], H200_PT_CHUNKED_LOSS_PEAK_GIB)])
def test_plan_of_the_measured_h200_runs_is_within_15_percent(tmp_path, flags, measured):
    result = plan(tmp_path, "pt", "--gpu", "H200", "--pure_bf16", "true", "--per_device_train_batch_size", "8",
                  "--block_size", "1024", "--gradient_accumulation_steps", "1", "--attn_implementation", "sdpa",
                  "--data_dir", str(REPO_ROOT / "mini_data" / "pt"), *flags)
    planned = result["memory"]["tensors"]["value"] / GIB
    assert abs(planned / measured - 1) < 0.15, (planned, measured)
    assert result["memory"]["tensors"]["basis"] == "estimated"


# ---------------------------------------------------------------- verdicts

def test_the_original_recipe_fits_six_80gb_gpus_with_zero2(tmp_path):
    # The defaults are the original run's (per-device 12, block 1024, grad-accum 16); several GPUs plan
    # `run.sh pt multi`: accelerate_config.yaml -> ds_zero2.json.
    result = plan(tmp_path, "pt", "--gpu", "H800", "--num_gpus", "6", "--dataset_tokens", "16000000000",
                  "--accelerate_config", str(REPO_ROOT / "accelerate_config.yaml"), "--price_per_gpu_hour", "2")
    assert result["memory"]["fits"]
    assert "ZeRO-2" in result["model"]["precision"]
    numerics = result["model"]["numerics"]  # ds_zero2.json's data_types and communication_data_type
    assert numerics["accumulation"] == "fp32" and numerics["communication"].startswith("fp32 (gradient")
    assert numerics["gradients"] == "bf16 per micro-batch" and numerics["weights"].startswith("bf16 in the module")
    assert (result["batch"]["per device"], result["batch"]["sequence"]) == (12, 1024)
    assert result["run"]["per step"]["value"] == 12 * 16 * 6
    assert result["time"]["cost"]["value"] > 0 and result["time"]["hours"]["basis"] == "estimated"


def test_1b_pt_does_not_fit_a_t4_and_the_suggested_flags_do(tmp_path):
    data = ["--data_dir", str(REPO_ROOT / "mini_data" / "pt")]
    result = plan(tmp_path, "pt", "--gpu", "T4", *data)
    assert not result["memory"]["fits"]
    suggestion = result["memory"]["what fits"]["flags"]
    assert any(flag.startswith("--per_device_train_batch_size ") for flag in suggestion)
    flags = [word for flag in suggestion for word in flag.split()]
    assert plan(tmp_path, "pt", "--gpu", "T4", *data, *flags)["memory"]["fits"]


@pytest.mark.parametrize("stage", stages.names())
def test_the_demo_recipes_fit_a_t4(tmp_path, stage):
    from mini_qwen.demo import demo_layers

    # As the demo scripts run on a 16 GB fp16 GPU: the 1b preset with the layers demo_layers keeps there.
    layers = demo_layers(int(find_gpu("T4").memory_gib * GIB), bf16=False,
                         config=build_config(PresetArguments(model_preset="1b")))
    flags = ["--config", str(REPO_ROOT / "demo" / f"{stage}.yaml"), "--gpu", "T4", "--num_hidden_layers", str(layers),
             "--data_dir", str(REPO_ROOT / "mini_data" / stage)]
    if stages.stage(stage).starts_from:  # the previous demo stage's output, not trained here: planned from the preset
        flags += ["--model_name_or_path", str(tmp_path / "not_trained_yet"), "--model_preset", "1b"]
    result = plan(tmp_path, stage, *flags)
    assert result["memory"]["fits"], result["memory"]
    assert result["model"]["parameters"]["value"] < 0.7e9


# ---------------------------------------------------------------- LoRA (--use_peft): the adapter and its memory

def lora_flags(rank=None, targets=None, dropout=None) -> LoraArguments:
    return LoraArguments(use_peft=True, lora_r=rank, lora_target_modules=targets, lora_dropout=dropout)


def lora_setup_like(flags: LoraArguments, model):
    """The stage's LoraConfig (mini_qwen.lora.lora_setup) for a model that has no checkpoint folder."""
    return peft_config(flags, block_linear_names(model), "the model")


def two_layer_1b_config():
    return build_config(PresetArguments(model_preset="1b", num_hidden_layers=2))


@pytest.mark.parametrize("rank, targets", [(None, None), (8, ["q_proj", "v_proj"]), (4, ["down_proj"])])
def test_planned_adapter_is_the_stages_real_peft_adapter(tiny_checkpoint, rank, targets):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    flags = lora_flags(rank, targets)
    # tiny: the stage's own path, a saved checkpoint loaded and wrapped with lora_setup's config
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_checkpoint), lora_setup(flags, tiny_checkpoint))
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    planned = lora_adapter(flags, model.config)
    assert planned.trainable == real > 0
    assert planned.rank == (rank or 16) and planned.dropout
    assert planned.targets == set(targets or block_linear_names(checkpoint_meta_model(tiny_checkpoint)))
    # 1b width, 2 layers: a real model on CPU (values unset: only shapes count)
    config = two_layer_1b_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model.to_empty(device="cpu"), peft_config(flags, block_linear_names(model), "1b"))
    assert lora_adapter(flags, config).trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("gpu", ["H100", "T4"])  # the frozen model in bf16 under --bf16, in fp32 on a T4
def test_lora_training_state_is_the_real_frozen_model_adapter_and_optimizer(gpu):
    from peft import get_peft_model

    roles = mini_qwen_plan.stage_arguments("sft")
    parsed = parse_args((*roles.values(), mini_qwen_plan.PlanArguments),
                        ["--gpu", gpu, "--model_preset", "1b", "--use_peft", "true"], gpu_flag="gpu")
    args = dict(zip(roles, parsed))
    config = build_config(args["preset"])
    adapter = lora_adapter(args["lora"], config)
    setup = build_setup("sft", args, config, Params.of(meta_model(config)), 1, None, {"trained share": 1.0,
                        "longest": {"value": 1024}}, adapter)
    planned = training_state(setup)

    # As the stage loads it (mini_qwen.model.load_model, frozen) and peft wraps it, on the meta device.
    model = meta_model(config, model_dtype(args["training"], frozen=True, on_gpu=True))
    model = get_peft_model(model, lora_setup_like(args["lora"], model))
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(trained, lr=1e-4, foreach=False)
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    assert {p.dtype for p in trained} == {torch.float32}  # peft keeps the adapter in fp32 over a bf16 model
    assert planned["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert planned["frozen weights"] == sum(p.numel() * p.element_size() for p in model.parameters()
                                            if not p.requires_grad)
    assert planned["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in trained)
    assert planned["optimizer state"] == state


@pytest.fixture(scope="module")
def cpu_lora_models():
    """Real peft models on CPU, one per (shape, attention, precision, LoRA flags), reused."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    cache = {}

    def get(shape: str, attention: str, base: torch.dtype, flags: LoraArguments):
        key = (shape, attention, base, flags.lora_r, tuple(flags.lora_target_modules or ()), flags.lora_dropout)
        if key not in cache:
            config = build_config(PresetArguments(model_preset="tiny")) if shape == "tiny" else two_layer_1b_config()
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
            params = Params.of(model)
            model = model.to_empty(device="cpu")
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(0.01)
            model = get_peft_model(model.to(base), lora_setup_like(flags, model))  # adapters in fp32, as on a GPU
            cache[key] = model.train(), params, lora_adapter(flags, config)
        return cache[key]

    return get


# fp32 on both models, eager and SDPA, checkpointing on and off, the stages' default LoRA (rank 16, dropout 0.05,
# every block linear); the GPU recipes' dtypes on the 1b-width model (bf16 frozen model + bf16 autocast as under
# --bf16; fp32 frozen model + autocast as on a T4, bf16 standing in for fp16 on CPU); other targets and no dropout.
LORA_CASES = [(shape, attention, checkpointing, "fp32", None, None)
              for shape in ("tiny", "1b-width, 2 layers") for attention in ("sdpa", "eager")
              for checkpointing in (False, True)]
LORA_CASES += [("1b-width, 2 layers", "sdpa", checkpointing, precision, None, None)
               for precision in ("bf16 + autocast", "fp32 + autocast") for checkpointing in (False, True)]
LORA_CASES += [("tiny", "sdpa", False, "bf16 + autocast", ["q_proj", "v_proj"], 0.05),
               ("tiny", "eager", False, "fp32", ["o_proj", "down_proj"], 0.0)]


@pytest.mark.parametrize("shape, attention, checkpointing, precision, targets, dropout", LORA_CASES)
def test_lora_activation_bytes_match_what_autograd_saves(cpu_lora_models, shape, attention, checkpointing, precision,
                                                         targets, dropout):
    flags = lora_flags(targets=targets, dropout=dropout)
    base = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    model, params, adapter = cpu_lora_models(shape, attention, base, flags)
    base_model = model.get_base_model()
    if checkpointing:  # as Trainer turns it on (transformers also makes the embeddings' output need a gradient)
        base_model.gradient_checkpointing_enable()
    block = 128
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, block))
    positions = torch.arange(block)[None]
    positions[:, block // 3:] -= block // 3  # two packed documents: a dense mask under SDPA
    try:
        body, total = saved_bytes(model, ids, positions, autocast="autocast" in precision)
    finally:
        base_model.gradient_checkpointing_disable()
        base_model.disable_input_require_grads()

    setup = Setup(base_model.config, params, weights="bf16" if base == torch.bfloat16 else "fp32",
                  autocast="bf16" if "autocast" in precision else None, batch=1, seq_len=block, mask="rows",
                  attention=attention, checkpointing=checkpointing, adapter=adapter, device="cpu")
    parts = activation_bytes(setup)
    planned_total = sum(parts.values())
    planned_body = planned_total - parts["loss"]
    assert abs(planned_body / body - 1) < 0.15, (planned_body, body)
    assert abs(planned_total / total - 1) < 0.15, (planned_total, total)


def test_1b_sft_on_a_t4_suggests_lora_and_the_lora_plan_fits(tmp_path):
    data = ["--data_dir", str(REPO_ROOT / "mini_data" / "sft"), "--model_name_or_path", str(tmp_path / "no_pt_yet")]
    full = plan(tmp_path, "sft", "--gpu", "T4", *data)
    assert not full["memory"]["fits"]
    assert full["memory"]["what fits"]["training state"]  # every weight does not fit at any batch
    suggestion = full["memory"]["what fits"]["adapter"]["flags"]
    assert suggestion[0] == "--use_peft true"
    lora = plan(tmp_path, "sft", "--gpu", "T4", *data, *[w for flag in suggestion for w in flag.split()])
    assert lora["memory"]["fits"]
    assert lora["model"]["trained parameters"]["value"] == lora_adapter(LoraArguments(use_peft=True),
                                                                        build_config(PresetArguments())).trainable
    assert lora["disk"]["final model"]["value"] == 4 * lora["model"]["trained parameters"]["value"]  # fp32 adapter
    assert lora["time"]["work share"]["value"] == round(4 / 6, 4)


def test_lora_dpo_keeps_no_reference_and_qlora_plans_without_bitsandbytes_here(tmp_path):
    data = ["--data_dir", str(REPO_ROOT / "mini_data" / "dpo"), "--model_name_or_path", str(tmp_path / "no_sft_yet")]
    full = plan(tmp_path, "dpo", "--gpu", "H100", *data)
    lora = plan(tmp_path, "dpo", "--gpu", "H100", *data, "--use_peft", "true")
    qlora = plan(tmp_path, "dpo", "--gpu", "H100", *data, "--use_peft", "true", "--load_in_4bit", "true")
    assert "reference model" in full["memory"]["per GPU"] and "reference model" not in lora["memory"]["per GPU"]
    assert "NF4" in qlora["model"]["precision"] and qlora["model"]["adapter"].startswith("QLoRA rank 16")
    frozen = {name: p["memory"]["per GPU"]["frozen weights"]["value"] for name, p in (("lora", lora),
                                                                                       ("qlora", qlora))}
    # 1b: 843.1M block-linear weights in NF4 (0.5 byte + an fp32 absmax per 64) and 155.7M others in fp32,
    # against 998.8M in bf16
    assert frozen["lora"] == 2 * full["model"]["parameters"]["value"]
    assert 0.5 < frozen["qlora"] / frozen["lora"] < 0.6
    assert lora["memory"]["total"]["value"] < full["memory"]["total"]["value"]
    # The reference is loaded as the fp32-master policy is; the QLoRA adapter stays fp32 (TRL's bf16 cast undone)
    params = full["model"]["parameters"]["value"]
    assert full["memory"]["per GPU"]["reference model"]["value"] == 4 * params
    assert full["model"]["numerics"]["reference"].startswith("fp32 frozen copy")
    assert qlora["model"]["numerics"]["weights"].endswith("fp32 adapter")
    assert qlora["disk"]["final model"]["value"] == 4 * qlora["model"]["trained parameters"]["value"]
    assert lora["model"]["numerics"]["reference"] == "the frozen model itself, adapter disabled"


def test_4bit_is_refused_for_a_planned_gpu_bitsandbytes_does_not_support():
    from dataclasses import replace

    old = replace(find_gpu("T4"), name="K80", capability=(3, 7))
    check_lora_args(LoraArguments(use_peft=True, load_in_4bit=True), cuda=False, planned_gpu=find_gpu("T4"))
    with pytest.raises(MiniQwenError, match="compute capability 6.0 or newer, and the K80 has 3.7"):
        check_lora_args(LoraArguments(use_peft=True, load_in_4bit=True), cuda=False, planned_gpu=old)


# ---------------------------------------------------------------- bad input: one line

@pytest.mark.parametrize("flags, expected", [
    (["--gpu", "B9000"], "error: unknown GPU 'B9000' for --gpu: known GPUs are H200, H100"),
    (["--gpu", "H100", "--num_gpus", "0"], "error: --num_gpus 0 is out of range: allowed at least 1."),
    (["--gpu", "H100", "--data_dir", "no/such/folder"], "error: PT data folder 'no/such/folder' does not exist"),
    (["sft", "--gpu", "T4", "--data_dir", str(REPO_ROOT / "mini_data" / "sft"), "--use_peft", "true",
      "--lora_target_modules", "qkv"], "error: --lora_target_modules: 'qkv' is not a linear layer of the planned"),
    (["sft", "--gpu", "T4", "--data_dir", str(REPO_ROOT / "mini_data" / "sft"), "--lora_r", "8"],
     "error: --lora_r only applies to LoRA training: add --use_peft true"),
])
def test_bad_input_is_one_error_line(capsys, flags, expected):
    stage = flags.pop(0) if flags[0] in stages.BY_NAME else "pt"
    with pytest.raises(SystemExit) as exit_:
        run_main(mini_qwen_plan.main, [stage, *flags])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    if "unknown GPU" in expected:
        assert all(name in lines[0] for name in ("T4", "V100-16", "A10", "L4", "A100-40", "A100-80", "H800",
                                                 "RTX3090", "RTX4090"))


def test_run_sh_plan_mode_reaches_the_planner():
    done = subprocess.run(["bash", str(REPO_ROOT / "run.sh"), "pt", "plan", "--gpu", "nope"], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"error: unknown GPU 'nope' for --gpu: known GPUs are {', '.join(g.name for g in GPUS)}."]


def test_a_grpo_plan_counts_generation_time_and_memory_and_says_it_is_estimated(tmp_path):
    data = ["--data_dir", str(REPO_ROOT / "mini_data" / "grpo" / "train.jsonl"), "--model_name_or_path",
            str(tmp_path / "no_sft_yet"), "--model_preset", "1b", "--gpu", "H100"]
    short = plan(tmp_path, "grpo", *data, "--max_completion_length", "64")
    long = plan(tmp_path, "grpo", *data, "--max_completion_length", "512")
    assert short["data"]["prompts"]["value"] == 240 and short["data"]["unit"] == "answers"
    for result in (short, long):
        gen = result["time"]["generation"]
        assert gen["hours"]["basis"] == "estimated" and "decode steps" in gen["seconds per step"]["source"]
        assert result["time"]["hours"]["value"] == pytest.approx(
            result["time"]["training hours"]["value"] + gen["hours"]["value"], abs=0.011)
        assert "not measured for grpo: dpo's figure" in result["time"]["mfu"]["source"]  # never PT's by default
    # answers 8x longer: 8x the decode steps and a larger KV cache
    ratio = long["time"]["generation"]["hours"]["value"] / short["time"]["generation"]["hours"]["value"]
    assert 6 < ratio < 9
    assert long["memory"]["per GPU"]["generation KV cache"]["value"] > \
        short["memory"]["per GPU"]["generation KV cache"]["value"] > 0
    assert short["memory"]["per GPU"]["reference model"]["value"] > 0  # --beta 0.04: a frozen reference


def test_an_unknown_stage_is_refused_not_planned_as_another():
    with pytest.raises(MiniQwenError, match=r"^name the stage to plan first: python mini_qwen_plan.py "
                                            r"pt\|sft\|dpo\|grpo .*got 'ppo'"):
        mini_qwen_plan.main(["ppo", "--gpu", "H100"])
    from mini_qwen.plan import plan_run

    with pytest.raises(MiniQwenError, match=r"^unknown stage 'ppo': use one of pt, sft, dpo, grpo\."):
        plan_run("ppo", {"data": None, "model": None, "training": None}, None, None)

def test_plan_json_goes_beside_the_run_or_where_out_says(tmp_path, monkeypatch, capsys):
    """Not into the current folder (the repository root, where it is not git-ignored): --output_dir's plan.json,
    or --out (a .json file, or a folder); an --out that cannot be written is one error line."""
    monkeypatch.chdir(tmp_path)
    flags = ["pt", "--gpu", "H100", "--model_preset", "tiny", "--dataset_tokens", "1000000"]
    run = tmp_path / "results" / "tiny_pt"
    result = mini_qwen_plan.main([*flags, "--output_dir", str(run)])
    assert json.loads((run / "plan.json").read_text()) == json.loads(json.dumps(result))
    assert f"plan written to {run / 'plan.json'}" in capsys.readouterr().out
    mini_qwen_plan.main([*flags, "--out", "plans"])
    mini_qwen_plan.main([*flags, "--out", "plans/tiny.json"])
    assert sorted(p.name for p in (tmp_path / "plans").iterdir()) == ["plan.json", "tiny.json"]
    assert not (tmp_path / "plan.json").exists()
    (tmp_path / "a_file").write_text("")
    err = cli_error(mini_qwen_plan.main, [*flags, "--out", "a_file/plan.json"], capsys)
    assert err.strip().startswith("error: cannot write the plan to a_file/plan.json")
