#!/usr/bin/env python3
"""Reference fixtures for SwiftTitan's HF import/export and numerics tests.

Creates, deterministically, under Tests/ModelTests/Fixtures/:

  tokens.npy                 shared 1-D int32 token stream (steps * G * (L+1) tokens)
  qwen3_moe/                 Qwen3MoeForCausalLM, fp32 random init   (config.json, model.safetensors, expected.json)
  qwen3_dense/               Qwen3ForCausalLM, untied embeddings     (same files)
  qwen3_tied/                Qwen3ForCausalLM, tie_word_embeddings   (same files)
  deepseek_v3/               DeepseekV3ForCausalLM (transformers 5.x): MLA with q_lora_rank, YaRN, interleaved
                             rope, group-limited sigmoid routing with a nonzero e_score_correction_bias,
                             shared expert, first layer dense               (same files)
  deepseek_v3_q0/            DeepseekV3ForCausalLM with q_lora_rank null (plain q_proj), rotate-half rope,
                             YaRN with mscale != mscale_all_dim            (same files)
  dtypes/                    dtypes.safetensors (F32 / F16 / BF16 / 0-d / empty tensors written by the
                             safetensors library) + expected.json (their exact decoded values)

expected.json holds the training recipe (torchtitan config names) and the reference
losses / grad norms of 10 steps trained with the numerics of DESIGN.md, in float32 and
(separately, from the same initial weights) in float64.

Usage (needs torch, transformers<5, numpy, safetensors):
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch "transformers<5" numpy safetensors
    /tmp/ref/bin/python scripts/make_hf_fixtures.py [--out Tests/ModelTests/Fixtures]
The DeepSeek-V3 fixtures need transformers 5.x (DeepseekV3ForCausalLM as 5.x defines it); they are made
alone, without rewriting tokens.npy, dtypes/ or the qwen3 folders:
    /tmp/ref/bin/python scripts/make_hf_fixtures.py --only deepseek_v3,deepseek_v3_q0
Generation expectations (KIND/generate.json, any transformers version; other files untouched):
    /tmp/ref/bin/python scripts/make_hf_fixtures.py --generate-expectations qwen3_moe,qwen3_dense,qwen3_tied
"""

import argparse
import copy
import json
import os
import platform
import sys

import numpy as np
import torch
import torch.nn.functional as F

import transformers
from transformers import (
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

# ---------------------------------------------------------------------------------------
# Recipe (torchtitan config names). One rank: local_batch_size == global batch size G.

STEPS = 10
GLOBAL_BATCH = 8
SEQ_LEN = 16
LR = 3e-3
BETA1, BETA2 = 0.9, 0.95
EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_NORM = 1.0
SEED = 0

VOCAB = 256
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    hidden_act="silu",
    max_position_embeddings=128,
    initializer_range=0.05,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    rope_scaling=None,
    attention_bias=False,
    attention_dropout=0.0,
    use_sliding_window=False,
    use_cache=False,
    torch_dtype="float32",
)
MOE_EXTRA = dict(
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    output_router_logits=False,  # no router aux loss: loss = CE only
    router_aux_loss_coef=0.0,
)


DEEPSEEK_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=16,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_shared_experts=1,
    n_routed_experts=8,
    routed_scaling_factor=2.5,
    kv_lora_rank=32,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=16,
    num_experts_per_tok=3,
    first_k_dense_replace=1,
    norm_topk_prob=True,
    hidden_act="silu",
    max_position_embeddings=163840,
    initializer_range=0.05,
    rms_norm_eps=1e-6,
    attention_bias=False,
    attention_dropout=0.0,
    use_cache=False,
    tie_word_embeddings=False,
    num_nextn_predict_layers=1,
)
DEEPSEEK = {
    # DeepSeek-V3's own rope scaling (factor 40 over 4096 positions, mscale = mscale_all_dim = 1), 4 expert groups of
    # which 2 are kept: selection really is group-limited.
    "deepseek_v3": dict(
        **DEEPSEEK_COMMON, num_hidden_layers=3, q_lora_rank=24, n_group=4, topk_group=2, rope_interleave=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, mscale=1.0, mscale_all_dim=1.0,
                             beta_fast=32, beta_slow=1, original_max_position_embeddings=4096)),
    # q_lora_rank null (q_proj), rotate-half rope, mscale != mscale_all_dim (attention_factor != 1).
    "deepseek_v3_q0": dict(
        **(DEEPSEEK_COMMON | dict(max_position_embeddings=8192)), num_hidden_layers=2, q_lora_rank=None, n_group=2, topk_group=1, rope_interleave=False,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, mscale=0.8, mscale_all_dim=1.0,
                             beta_fast=32, beta_slow=1, original_max_position_embeddings=1024)),
}


def make_tokens(n, seed):
    """Structured stream so that the loss can fall: a noisy affine Markov chain."""
    rng = np.random.default_rng(seed)
    toks = np.empty(n, dtype=np.int64)
    toks[0] = rng.integers(VOCAB)
    for i in range(1, n):
        if rng.random() < 0.75:
            toks[i] = (toks[i - 1] * 5 + 3) % VOCAB
        else:
            toks[i] = rng.integers(VOCAB)
    return toks.astype(np.int32)


def windows_for_step(tokens, step):
    """Step is 1-based. Window i = tokens[i*(L+1) ..< (i+1)*(L+1)]; input first L, labels last L."""
    L = SEQ_LEN
    n_windows = len(tokens) // (L + 1)
    xs, ys = [], []
    for w in range((step - 1) * GLOBAL_BATCH, step * GLOBAL_BATCH):
        w = w % n_windows
        win = tokens[w * (L + 1):(w + 1) * (L + 1)]
        xs.append(win[:L])
        ys.append(win[1:])
    x = torch.tensor(np.stack(xs), dtype=torch.long)
    y = torch.tensor(np.stack(ys), dtype=torch.long)
    return x, y


def perturb_norms(model, gen):
    """HF initialises every RMSNorm weight to 1; make them distinct so that a wrong
    mapping of attention_norm / ffn_norm / q_norm / k_norm / norm shows in the tests."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def perturb_correction_bias(model, gen):
    """HF initialises e_score_correction_bias to 0; a nonzero bias (used for expert selection only, never in
    the weights) shows whether it is imported and applied where DeepseekV3TopkRouter applies it."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen, dtype=b.dtype))


def tokens_per_expert_hooks(model, store):
    """Record, per MoE layer, how many (token, slot) assignments each expert receives."""
    handles = []
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if not hasattr(mlp, "gate") or not hasattr(mlp, "experts"):
            continue
        if not hasattr(mlp, "top_k"):  # DeepseekV3TopkRouter returns (logits, weights, indices)
            n_exp = mlp.gate.num_experts

            def ds_hook(_mod, _inp, out, i=i, n_exp=n_exp):
                store.setdefault(i, torch.bincount(out[2].flatten(), minlength=n_exp).tolist())

            handles.append(mlp.gate.register_forward_hook(ds_hook))
            continue
        top_k = mlp.top_k
        n_exp = mlp.num_experts

        def hook(_mod, _inp, out, i=i, top_k=top_k, n_exp=n_exp):
            probs = torch.softmax(out.detach().to(torch.float64), dim=-1)
            idx = torch.topk(probs, top_k, dim=-1).indices
            store.setdefault(i, torch.bincount(idx.flatten(), minlength=n_exp).tolist())

        handles.append(mlp.gate.register_forward_hook(hook))
    return handles


def per_expert_names(tensors, f):
    """{name: f(tensor)} under the names of the saved checkpoint: transformers 5 holds routed experts fused
    (experts.gate_up_proj [E, 2F, D], experts.down_proj [E, D, F]) and saves them per expert."""
    out = {}
    for n, t in tensors.items():
        if n.endswith(".experts.gate_up_proj"):
            base, F_ = n[: -len("gate_up_proj")], t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = f(t[e, :F_])
                out[f"{base}{e}.up_proj.weight"] = f(t[e, F_:])
        elif n.endswith(".experts.down_proj"):
            base = n[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = f(t[e])
        else:
            out[n] = f(t)
    return out


def train(model, tokens, dtype, record_debug):
    model = model.to(dtype)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WEIGHT_DECAY
    )
    losses, grad_norms = [], []
    debug = {}
    for step in range(1, STEPS + 1):
        x, y = windows_for_step(tokens, step)
        tpe = {}
        handles = tokens_per_expert_hooks(model, tpe) if (record_debug and step == 1) else []
        logits = model(input_ids=x).logits  # [G, L, V]; no labels -> no HF shifted loss
        for h in handles:
            h.remove()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if record_debug and step == 1:
            lg = logits.detach().to(torch.float64)
            debug["step1_window0_input"] = x[0].tolist()
            debug["step1_window0_labels"] = y[0].tolist()
            debug["step1_logits_shape"] = list(lg.shape)
            debug["step1_logits_sum"] = lg.sum().item()
            debug["step1_logits_abs_sum"] = lg.abs().sum().item()
            debug["step1_logits_b0_t0_first8"] = lg[0, 0, :8].tolist()
            debug["step1_logits_last_last_first8"] = lg[-1, -1, :8].tolist()
            if tpe:
                debug["step1_tokens_per_expert"] = [tpe[k] for k in sorted(tpe)]
            debug["step1_param_grad_norms_hf"] = per_expert_names({
                n: p.grad.detach().to(torch.float64)
                for n, p in model.named_parameters()
                if p.grad is not None
            }, lambda t: t.norm().item())
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_NORM)
        opt.step()
        losses.append(loss.item())
        grad_norms.append(gn.item())
    if record_debug:
        debug["final_param_sums_hf"] = per_expert_names({
            n: p.detach().to(torch.float64) for n, p in model.named_parameters()
        }, lambda t: t.sum().item())
    return losses, grad_norms, debug


def recipe(name, tokens_file, n_tokens):
    r = {
        "training": {
            "steps": STEPS,
            "local_batch_size": GLOBAL_BATCH,
            "global_batch_size": GLOBAL_BATCH,
            "seq_len": SEQ_LEN,
            "max_norm": MAX_NORM,
            "seed": SEED,
            "dtype": "float32",
        },
        "optimizer": {
            "name": "AdamW",
            "lr": LR,
            "beta1": BETA1,
            "beta2": BETA2,
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
            "weight_decay_applies_to": "all parameters (torch.optim.AdamW defaults, no param groups)",
        },
        "lr_scheduler": {"warmup_steps": 0, "decay_ratio": 0, "note": "constant lr"},
        "parallelism": {"data_parallel_shard_degree": 1, "expert_parallel_degree": 1},
        "dataloader": {"dataset_path": tokens_file, "dtype": "int32", "num_tokens": n_tokens},
        "checkpoint": {"initial_load_path": name, "initial_load_in_hf": True},
        "loss": "mean F.cross_entropy over all G*L label tokens of the global batch (no router aux loss)",
        "windows": "window i = tokens[i*(L+1) ..< (i+1)*(L+1)], input first L, labels last L; "
                   "step s (1-based) uses windows (s-1)*G ..< s*G",
        "grad_norm": "total L2 norm of all gradients before clipping (torch.nn.utils.clip_grad_norm_)",
    }
    flat = []
    for sec in ("training", "optimizer", "lr_scheduler"):
        for k, v in r[sec].items():
            if k in ("name", "note", "weight_decay_applies_to", "global_batch_size", "dtype"):
                continue
            flat += [f"--{sec}.{k}", repr(v) if isinstance(v, float) else str(v)]
    r["cli_overrides"] = flat
    return r


def build(kind):
    if kind == "qwen3_moe":
        cfg = Qwen3MoeConfig(**COMMON, **MOE_EXTRA, tie_word_embeddings=False)
        cls = Qwen3MoeForCausalLM
    elif kind == "qwen3_dense":
        cfg = Qwen3Config(**COMMON, tie_word_embeddings=False)
        cls = Qwen3ForCausalLM
    elif kind == "qwen3_tied":
        cfg = Qwen3Config(**COMMON, tie_word_embeddings=True)
        cls = Qwen3ForCausalLM
    elif kind in DEEPSEEK:
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
        cfg = DeepseekV3Config(**DEEPSEEK[kind])
        cls = DeepseekV3ForCausalLM
    else:
        raise ValueError(kind)
    cfg._attn_implementation = "eager"
    if kind in DEEPSEEK:
        cfg._experts_implementation = "eager"  # the per-expert loop of DeepseekV3Experts.forward (fp64 too)
    return cls(cfg), cls.__name__


def make_dtype_fixture(out):
    """dtypes/dtypes.safetensors: the same values stored as F32, F16 and BF16 by the safetensors
    library, and dtypes/expected.json with the exact float values each should decode to."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(SEED + 5)
    base = torch.cat([
        torch.randn(20, generator=g, dtype=torch.float32) * 3,
        torch.tensor([0.0, -0.0, 1.0, -2.5, 65504.0, 2.0 ** -24, 1e-8, float("inf"), float("-inf"), 1.0 / 3.0,
                      -1e30, 3.0e38], dtype=torch.float32),
    ]).reshape(4, 8)
    tensors = {
        "values.f32": base.clone(),
        "values.f16": base.to(torch.float16),
        "values.bf16": base.to(torch.bfloat16),
        "scalar.f32": torch.tensor(7.25, dtype=torch.float32),
        "empty.bf16": torch.zeros(0, 3, dtype=torch.bfloat16),
    }
    folder = os.path.join(out, "dtypes")
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "dtypes.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(folder, "dtypes.safetensors"), 0o644)

    def enc(t):
        vals = []
        for v in t.to(torch.float64).flatten().tolist():
            vals.append(v if v == v and abs(v) != float("inf") else ("inf" if v > 0 else "-inf") if v == v else "nan")
        return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "values": vals}

    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump({k: enc(v) for k, v in tensors.items()}, f, indent=1)
        f.write("\n")


# Generation expectations (titan generate): written next to an existing fixture, never touching its other files.
GENERATE_PROMPTS = [[1, 2, 3, 4, 5], [7], "window0"]  # "window0": the first 16 tokens of tokens.npy
GENERATE_NEW_TOKENS = 24
GENERATE_SAMPLING = [dict(temperature=0.7), dict(temperature=1.3, top_k=5), dict(temperature=0.9, top_p=0.6),
                     dict(temperature=1.0, top_k=12, top_p=0.8)]


def make_generate_expectations(out, kinds):
    """KIND/generate.json: for each prompt, HF generate(do_sample=False) continuations from the fixture's weights, the
    smallest top-1 / top-2 logit gap along the way (greedy is well defined only when it is not at round-off), and,
    for the prompt's last position, the distribution HF's logits processors (temperature, top_k, top_p, in
    generate()'s order) leave for a few settings."""
    from transformers import AutoModelForCausalLM
    from transformers.generation.logits_process import (
        LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    tokens = np.load(os.path.join(out, "tokens.npy"))
    for kind in kinds:
        folder = os.path.join(out, kind)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        cases = []
        for prompt in GENERATE_PROMPTS:
            ids = tokens[:SEQ_LEN].tolist() if prompt == "window0" else prompt
            x = torch.tensor([ids], dtype=torch.long)
            with torch.no_grad():
                g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=GENERATE_NEW_TOKENS,
                                   min_new_tokens=GENERATE_NEW_TOKENS, pad_token_id=0, eos_token_id=None,
                                   output_scores=True, return_dict_in_generate=True)
                gaps = [float(torch.topk(sc[0].double(), 2).values.diff().abs()) for sc in g.scores]
                last = model(input_ids=x).logits[0, -1].float()
            sampling = []
            for opt in GENERATE_SAMPLING:
                procs = LogitsProcessorList([TemperatureLogitsWarper(opt["temperature"])])
                if opt.get("top_k"):
                    procs.append(TopKLogitsWarper(top_k=opt["top_k"]))
                if opt.get("top_p", 1.0) < 1.0:
                    procs.append(TopPLogitsWarper(top_p=opt["top_p"]))
                probs = torch.softmax(procs(x, last[None].clone())[0], dim=-1).double()
                kept = torch.nonzero(probs > 0).flatten().tolist()
                sampling.append(dict(opt, kept_ids=kept, kept_probs=[probs[i].item() for i in kept]))
            cases.append(dict(prompt_ids=ids, new_ids=g.sequences[0, len(ids):].tolist(), min_top2_gap=min(gaps),
                              last_logits_first8=last[:8].tolist(), sampling=sampling))
        with open(os.path.join(folder, "generate.json"), "w") as f:
            json.dump({"model": kind, "max_new_tokens": GENERATE_NEW_TOKENS, "cases": cases,
                       "generator": {"script": "scripts/make_hf_fixtures.py --generate-expectations",
                                     "torch": torch.__version__, "transformers": transformers.__version__,
                                     "call": "generate(do_sample=False, max_new_tokens, min_new_tokens, eos_token_id=None)"}},
                      f, indent=1)
            f.write("\n")
        print(f"{kind}: generate.json, min top-2 gaps {[round(c['min_top2_gap'], 5) for c in cases]}")


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "Tests", "ModelTests", "Fixtures"))
    ap.add_argument("--only", default=None,
                    help="comma-separated model folders to make (e.g. deepseek_v3,deepseek_v3_q0); "
                         "tokens.npy and dtypes/ are then left as they are")
    ap.add_argument("--generate-expectations", default=None, metavar="KINDS",
                    help="only write KIND/generate.json (greedy continuations, logits processors) for these "
                         "comma-separated existing fixtures, e.g. qwen3_moe,qwen3_dense,qwen3_tied")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if args.generate_expectations:
        torch.set_num_threads(1)
        make_generate_expectations(out, args.generate_expectations.split(","))
        return

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    n_tokens = STEPS * GLOBAL_BATCH * (SEQ_LEN + 1)
    tokens = make_tokens(n_tokens, SEED)
    kinds = ["qwen3_moe", "qwen3_dense", "qwen3_tied"] + list(DEEPSEEK)
    if args.only is None:
        np.save(os.path.join(out, "tokens.npy"), tokens)
        make_dtype_fixture(out)
        selected = ["qwen3_moe", "qwen3_dense", "qwen3_tied"]
    else:
        selected = args.only.split(",")
        for k in selected:
            if k not in kinds:
                raise SystemExit(f"--only: unknown fixture {k!r} (known: {', '.join(kinds)})")

    for idx, kind in enumerate(kinds):
        if kind not in selected:
            continue
        torch.manual_seed(SEED + 1000 * (idx + 1))
        model, cls_name = build(kind)
        gen = torch.Generator().manual_seed(SEED + 1000 * (idx + 1) + 7)
        perturb_norms(model, gen)
        perturb_correction_bias(model, gen)
        model = model.float()

        folder = os.path.join(out, kind)
        os.makedirs(folder, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        os.chmod(os.path.join(folder, "model.safetensors"), 0o644)
        gen_cfg = os.path.join(folder, "generation_config.json")
        if os.path.exists(gen_cfg):
            os.remove(gen_cfg)

        init = copy.deepcopy(model)
        init_sums = {n: p.detach().to(torch.float64).sum().item() for n, p in init.named_parameters()}
        losses32, gn32, debug = train(copy.deepcopy(init), tokens, torch.float32, True)
        debug["initial_param_sums_hf"] = init_sums
        losses64, gn64, _ = train(copy.deepcopy(init), tokens, torch.float64, False)

        expected = {
            "model": kind,
            "hf_class": cls_name,
            "files": {"config": "config.json", "weights": "model.safetensors", "tokens": "../tokens.npy"},
            "recipe": recipe(kind, "../tokens.npy", n_tokens),
            "losses": losses32,
            "grad_norms": gn32,
            "losses_fp64": losses64,
            "grad_norms_fp64": gn64,
            "max_abs_loss_diff_fp32_vs_fp64": max(abs(a - b) for a, b in zip(losses32, losses64)),
            "max_rel_grad_norm_diff_fp32_vs_fp64": max(abs(a - b) / abs(b) for a, b in zip(gn32, gn64)),
            "debug": debug,
            "generator": {
                "script": "scripts/make_hf_fixtures.py",
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "numpy": np.__version__,
                "attn_implementation": "eager",
                "note": "norm weights perturbed to 1 + 0.1*N(0,1) after HF init",
            },
        }
        with open(os.path.join(folder, "expected.json"), "w") as f:
            json.dump(expected, f, indent=1)
            f.write("\n")
        print(f"{kind}: losses {['%.4f' % l for l in losses32]}")
        print(f"{kind}: grad_norms {['%.3f' % g for g in gn32]}")
        print(f"{kind}: fp32 vs fp64 max |dloss| {expected['max_abs_loss_diff_fp32_vs_fp64']:.3e}")

    total = 0
    for root, _, files in os.walk(out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"fixtures total {total / 1e6:.3f} MB in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
