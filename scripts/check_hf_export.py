#!/usr/bin/env python3
"""Checks that HF folders exported by SwiftTitan load in HF transformers and compute the same
logits as the reference fixtures they came from.

    HF_EXPORT_DIR=/tmp/hf_export swift test --scratch-path .build-hf --filter HFTests/testSaveLoadFolderSingleAndSharded
    /tmp/ref/bin/python scripts/check_hf_export.py /tmp/hf_export [--fixtures Tests/ModelTests/Fixtures]

Exit code 0 when every exported folder loads with from_pretrained as the right class, with no
missing / unexpected keys, and its weights are bit-identical to the fixture's (logits within 1e-5).
"""

import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("--fixtures", default=os.path.join(here, "..", "Tests", "ModelTests", "Fixtures"))
    args = ap.parse_args()

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
