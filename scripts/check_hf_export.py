#!/usr/bin/env python3
"""Checks that HF folders exported by SwiftTitan load in HF transformers and compute the same
logits as the reference fixtures they came from.

    HF_EXPORT_DIR=/tmp/hf_export swift test --scratch-path .build-hf --filter HFTests/testSaveLoadFolderSingleAndSharded
    /tmp/ref/bin/python scripts/check_hf_export.py /tmp/hf_export [--fixtures Tests/ModelTests/Fixtures]

Exit code 0 when every exported folder loads with from_pretrained as the right class, with no
missing / unexpected keys, and its weights are bit-identical to the fixture's (logits within 1e-5).

Loss mode: an HF folder exported from a training run (`titan convert` of DUMP/checkpoint/step-(S-1), or
`--checkpoint.last_save_in_hf`) loaded in transformers gives, on the global batch of step S, the loss the
trainer logged for step S in DUMP/metrics.jsonl (computed with the same weights), within 1e-5 relative:

    titan convert --from DUMP/checkpoint/step-5 --to /tmp/hf5
    /tmp/ref/bin/python scripts/check_hf_export.py --loss /tmp/hf5 --run DUMP --step 6

(Token datasets only. Qwen3: train without --model.moe.load_balance_coeff, HF has no expert bias there;
DeepSeek-V3 exports it as e_score_correction_bias.)
"""

import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM


def check_loss(hf_dir, run_dir, step, global_batch=None):
    """Loss of the HF model on the global batch of `step` (DESIGN.md windows) vs the trainer's metrics."""
    import numpy as np
    import torch.nn.functional as F

    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    L = cfg["training"]["seq_len"]
    p = cfg["parallelism"]
    if global_batch is None:
        if p["data_parallel_shard_degree"] < 1:
            print("data_parallel_shard_degree is -1 in config.json: pass --global-batch")
            return 1
        global_batch = cfg["training"]["local_batch_size"] * p["data_parallel_replicate_degree"] * p["data_parallel_shard_degree"]
    G = global_batch
    tokens = np.load(cfg["dataloader"]["dataset_path"]).astype(np.int64).reshape(-1)
    n_windows = len(tokens) // (L + 1)
    rows = [tokens[(w % n_windows) * (L + 1):(w % n_windows + 1) * (L + 1)] for w in range((step - 1) * G, step * G)]
    batch = torch.tensor(np.stack(rows))
    want = None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if m["step"] == step:
                want = m["loss"]
    if want is None:
        print(f"no step {step} in {run_dir}/metrics.jsonl")
        return 1
    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch[:, :L]).logits
        got = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), batch[:, 1:].reshape(-1)).item()
    rel = abs(got - want) / abs(want)
    good = rel < 1e-5
    print(f"{hf_dir} ({type(model).__name__}): loss on step {step}'s batch {got:.10f}, trainer {want:.10f}, "
          f"rel diff {rel:.2e} -> {'OK' if good else 'FAIL'}")
    return 0 if good else 1


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir", nargs="?")
    ap.add_argument("--fixtures", default=os.path.join(here, "..", "Tests", "ModelTests", "Fixtures"))
    ap.add_argument("--loss", metavar="HF_DIR", help="loss mode: the HF folder to evaluate")
    ap.add_argument("--run", metavar="DUMP", help="loss mode: the training run folder (config.json, metrics.jsonl)")
    ap.add_argument("--step", type=int, help="loss mode: the step whose batch and logged loss to compare")
    ap.add_argument("--global-batch", type=int, default=None)
    args = ap.parse_args()
    if args.loss:
        if not args.run or not args.step:
            ap.error("--loss needs --run and --step")
        return check_loss(args.loss, args.run, args.step, args.global_batch)
    if not args.export_dir:
        ap.error("give an export folder, or --loss HF_DIR --run DUMP --step S")

    ok = True
    names = sorted(n for n in os.listdir(args.export_dir) if os.path.isdir(os.path.join(args.export_dir, n)))
    if not names:
        print(f"no exported folders in {args.export_dir}")
        return 1
    x = torch.arange(24).reshape(2, 12) % 256
    for name in names:
        exp = os.path.join(args.export_dir, name)
        ref = os.path.join(args.fixtures, name[: -len("_sharded")] if name.endswith("_sharded") else name)
        m_exp, info = AutoModelForCausalLM.from_pretrained(exp, output_loading_info=True, attn_implementation="eager")
        m_ref = AutoModelForCausalLM.from_pretrained(ref, attn_implementation="eager")
        problems = {k: v for k, v in info.items() if v}
        with open(os.path.join(ref, "config.json")) as f:
            want_cls = json.load(f)["architectures"][0]
        same_cls = type(m_exp).__name__ == want_cls
        with torch.no_grad():
            a = m_exp(input_ids=x).logits
            b = m_ref(input_ids=x).logits
        diff = (a - b).abs().max().item()
        sa, sb = m_exp.state_dict(), m_ref.state_dict()
        same_weights = set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        tied = m_exp.lm_head.weight.data_ptr() == m_exp.model.embed_tokens.weight.data_ptr()
        # Weights must be bit-identical; logits may differ by BLAS round-off (tensor alignment in mmap'd shards).
        good = same_cls and not problems and same_weights and diff <= 1e-5 and tied == m_ref.config.tie_word_embeddings
        ok &= good
        print(f"{name}: class {type(m_exp).__name__} ({'ok' if same_cls else 'expected ' + want_cls}), "
              f"loading problems {problems or 'none'}, weights identical {same_weights}, tied {tied}, max |logit diff| {diff:.3e} -> {'OK' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
