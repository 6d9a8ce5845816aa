#!/usr/bin/env bash
# Generation throughput: `titan generate` on bench_moe (random init from training.seed; 4 layers, D=256, 16 experts
# top-2, vocab 2048), greedy, NEW new tokens after prompts of 16 and 512 tokens, with the KV cache and, for contrast,
# without it (every token recomputes the whole sequence). With the cache a new token costs one position through every
# layer (attention reads the cached keys: O(prefix) dot products), so decode tokens/s should stay close between the
# two prompt lengths; without it the cost grows with the sequence.
# Prints a table and one JSON line per row:
#   {"name", "prompt_len", "kv_cache", "new_tokens", "prefill_s", "decode_tokens_per_sec", "tokens_per_sec"}
#
#   scripts/bench_generate.sh                 # 128 new tokens, best of 3 runs per row
#   NEW=64 RUNS=5 THREADS=2 scripts/bench_generate.sh
#
# decode_tokens_per_sec: new tokens / the time from choosing the first new token to the last (prefill excluded).
# tokens_per_sec: new tokens / (prefill + decode), as titan generate's JSON line reports it.
# One kernel thread by default (THREADS, as OPENBLAS_NUM_THREADS).
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-128}
RUNS=${RUNS:-3}
THREADS=${THREADS:-1}
BUILD_PATH=${BUILD_PATH:-.build}
command -v jq >/dev/null || { echo "bench_generate.sh: needs jq: sudo apt-get install -y jq" >&2; exit 1; }

scripts/bootstrap.sh
if ! log=$(swift build -c release --scratch-path "$BUILD_PATH" --product titan 2>&1); then
    echo "$log" >&2; echo "bench_generate.sh: build failed" >&2; exit 1
fi
TITAN="$BUILD_PATH/release/titan"

# A prompt of n ids below the vocabulary (deterministic).
prompt() { seq 0 $(($1 - 1)) | awk '{ printf "%s%d", (NR > 1 ? "," : ""), ($1 * 37 + 11) % 2048 }'; }

printf "%-22s %10s %8s %10s %10s %16s %12s\n" name prompt_len kv_cache new prefill_s decode_tok_per_s tok_per_s >&2
for kv in true false; do
    for len in 16 512; do
        best=""
        for _ in $(seq "$RUNS"); do
            line=$(OPENBLAS_NUM_THREADS=$THREADS "$TITAN" generate --module qwen3 --config bench_moe \
                --generate.prompt_ids "$(prompt "$len")" --generate.max_new_tokens "$NEW" --generate.kv_cache $kv 2>/dev/null | tail -1)
            if [ -z "$best" ] || [ "$(jq -n "$line.decode_tokens_per_sec > $best.decode_tokens_per_sec")" = true ]; then best=$line; fi
        done
        name="bench_moe_p${len}_$([ $kv = true ] && echo cache || echo nocache)"
        jq -r --arg n "$name" '"\($n)|\(.prompt_ids | length)|\(.new_ids | length)|\(.prefill_s)|\(.decode_tokens_per_sec)|\(.tokens_per_sec)"' <<<"$best" |
            awk -F'|' -v kv=$kv '{ printf "%-22s %10d %8s %10d %10.4f %16.1f %12.1f\n", $1, $2, kv, $3, $4, $5, $6 }' >&2
        jq -c --arg n "$name" --argjson kv $kv '{name: $n, prompt_len: (.prompt_ids | length), kv_cache: $kv, new_tokens: (.new_ids | length),
            prefill_s, decode_tokens_per_sec, tokens_per_sec}' <<<"$best"
    done
done
