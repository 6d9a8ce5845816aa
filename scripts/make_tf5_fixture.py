#!/usr/bin/env python3
"""The transformers 5.x twin of the qwen3_moe fixture: the same weights, re-saved by transformers >= 5.

transformers 5 keeps Qwen3-MoE experts fused in memory (gate_up_proj [E, 2F, D], down_proj [E, D, F]) but
save_pretrained writes them back per expert, as 4.x does; what changes on disk is config.json
(num_local_experts instead of num_experts, rope_parameters instead of rope_theta / rope_scaling).
HFTests.testTransformers5FolderLoadsLikeTransformers4 checks that both folders load to the same model.

Usage (transformers >= 5 next to the fixtures' torch, e.g. in /tmp/tf5 without touching /tmp/ref):
    /tmp/ref/bin/pip install --target /tmp/tf5 "transformers>=5" "huggingface-hub>=1.31" "tokenizers>=0.23.1" regex typer
    PYTHONPATH=/tmp/tf5 /tmp/ref/bin/python scripts/make_tf5_fixture.py [--fixtures Tests/ModelTests/Fixtures]
"""

import argparse
import os

import torch
import transformers
from transformers import AutoModelForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "ModelTests", "Fixtures"))
a = parser.parse_args()
major = int(transformers.__version__.split(".")[0])
if major < 5:
    raise SystemExit(f"needs transformers >= 5, found {transformers.__version__}")
src, dst = os.path.join(a.fixtures, "qwen3_moe"), os.path.join(a.fixtures, "qwen3_moe_tf5")
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
model.save_pretrained(dst)
print(f"{dst}: saved by transformers {transformers.__version__}")
