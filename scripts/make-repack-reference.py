#!/usr/bin/env python3
"""Writes tests/data/repack/greedy.PATH.json: llama.cpp's greedy tokens on SmolLM2-135M requantized
to Q4_0 and Q4_K_M, with its weight repacking on (its default) and off (--no-repack).

    scripts/make-repack-reference.py ORACLE

ORACLE is a llama.cpp build on the same ggml as vendor/ggml (scripts/build-oracle.sh of issue 19):
ORACLE/bin-native/llama-server and ORACLE/models/SmolLM2-135M-Instruct.{Q4_0,Q4_K_M}.gguf (made by
llama-quantize --allow-requantize from the Q4_1 model). PATH is the SIMD path llama.cpp reports
(avx512 or avx2): repacked kernels, like plain ones, differ between the two.
Per model, setting and prompt: the prompt's token ids, 32 greedy tokens, and per step llama.cpp's
top-2 log-probability margin (tests/repack_golden.rs forgives a difference only at a near-tie).
Nothing in the output is edited by hand: rerun this script to change it.
"""

import hashlib
import json
import math
import os
import sys

from reference_common import greedy, start_server

TYPES = ["Q4_0", "Q4_K_M"]
PROMPTS = [
    "14 + 16 =",
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
]
N_PREDICT = 32
THREADS = 2
N_CTX = 512
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "repack")


def complete(port, prompt):
    tokens, res = greedy(port, prompt, N_PREDICT, samplers=["top_k"])
    margins = []
    for step in res["completion_probabilities"]:
        top = step["top_logprobs"]
        margins.append(round(top[0]["logprob"] - top[1]["logprob"], 5) if len(top) > 1 else math.inf)
    return {"prompt": prompt, "prompt_tokens": tokens, "output_tokens": res["tokens"],
            "top2_margins": margins}


def simd_path(log_text):
    # llama.cpp's system_info line: "CPU : SSE3 = 1 | ... | AVX512 = 1 | ..."
    return "avx512" if "AVX512 = 1" in log_text else "avx2"


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    oracle = sys.argv[1]
    binary = os.path.join(oracle, "bin-native", "llama-server")
    os.makedirs(OUT, exist_ok=True)
    models, path = {}, None
    for t in TYPES:
        model = os.path.join(oracle, "models", f"SmolLM2-135M-Instruct.{t}.gguf")
        with open(model, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        entry = {"file_sha256": sha}
        for repack in (True, False):
            log_path = os.path.join(OUT, f".server-{t}-{repack}.log")
            with open(log_path, "w") as log:
                extra = [] if repack else ["--no-repack"]
                proc, port = start_server(binary, model, THREADS, N_CTX, log, ["-lv", "4", *extra])
                try:
                    cases = [complete(port, p) for p in PROMPTS]
                finally:
                    proc.terminate()
                    proc.wait()
            text = open(log_path).read()
            os.remove(log_path)
            path = path or simd_path(text)
            entry["repack" if repack else "no_repack"] = cases
            print(f"{t} repack={repack}: {[c['output_tokens'][:6] for c in cases]}", file=sys.stderr)
        # Repacked kernels round differently: identical margins would mean the flag did nothing.
        if [c["top2_margins"] for c in entry["repack"]] == [c["top2_margins"] for c in entry["no_repack"]]:
            raise SystemExit(f"{t}: llama.cpp gave identical log-probabilities with and without --no-repack")
        models[t] = entry
    out = {
        "simd_path": path,
        "generator": "scripts/make-repack-reference.py",
        "server": f"llama-server -t {THREADS} -c {N_CTX} -np 1 -fa on [--no-repack]; /completion with the "
                  f"/tokenize ids, temperature 0, top_k 1, n_probs 2, n_predict {N_PREDICT}",
        "models": models,
    }
    dest = os.path.join(OUT, f"greedy.{path}.json")
    with open(dest, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
