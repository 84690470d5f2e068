#!/usr/bin/env python3
"""Writes the format-matrix references from a llama.cpp oracle (scripts/build-oracle.sh).

    scripts/make-format-reference.py ORACLE --simd native|avx2

Reads ORACLE/models/SmolLM2-135M-Instruct.TYPE.gguf (made by llama-quantize) and runs
ORACLE/build-SIMD/bin/llama-server on each. Writes, in tests/data/format-matrix/:
  recipe.json      per type: llama-quantize's type and sha256 for every tensor (the test rebuilds the
                   files from the Q4_1 model with ggml's quantize functions and must get these bytes)
  greedy.PATH.json per type and prompt: llama.cpp's prompt tokens, 32 greedy tokens, per-step top-2
                   log-probability margins. PATH is the SIMD path llama.cpp reports (avx512 or avx2).
and tests/data/ggml-kernels.PATH.json: the bits of ggml_mul_mat per type from ORACLE/bin-SIMD/ggml-kernel-ref
(scripts/oracle/ggml-kernel-ref.c), for tests/ggml_ops.rs.
Nothing here is edited by hand: rerun this script to change them.
"""

import hashlib
import json
import os
import struct
import subprocess
import sys

from reference_common import greedy, start_server

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
         "IQ4_NL", "IQ4_XS", "F16", "BF16"]
# Raw prompts (no BOS: SmolLM2's metadata says add_bos_token=false), each continued greedily.
PROMPTS = [
    "Lisbon is the capital of",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Q: What is 12 times 12?\nA:",
    "Once upon a time, in a small village by the sea,",
]
N_PREDICT = 32
THREADS = 1
N_CTX = 512
BASE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "format-matrix")

# ggml type ids -> names (enum ggml_type), for the types llama-quantize writes here.
GGML_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 10: "q2_K",
              11: "q3_K", 12: "q4_K", 13: "q5_K", 14: "q6_K", 20: "iq4_nl", 23: "iq4_xs", 30: "bf16"}
# (elements per block, bytes per block)
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
          10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
          20: (32, 18), 23: (256, 136), 30: (1, 2)}


def gguf_tensors(path):
    """(file_type, [(name, type id, dims, data bytes)]) from a GGUF v3 file, minimal parser."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode()
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF", path
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3, version
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    out = []
    for name, dims, ty, off in infos:
        n = 1
        for d in dims:
            n *= d
        blk, size = BLOCKS[ty]
        out.append((name, ty, dims, data[base + off: base + off + n // blk * size]))
    return kv.get("general.file_type"), out


def recipe(oracle):
    entries = []
    for t in TYPES:
        path = os.path.join(oracle, "models", f"SmolLM2-135M-Instruct.{t}.gguf")
        file_type, tensors = gguf_tensors(path)
        entries.append({
            "type": t,
            "file_type": file_type,
            "tensors": [{"name": n, "type": GGML_TYPES[ty], "sha256": hashlib.sha256(b).hexdigest()}
                        for n, ty, _dims, b in tensors],
        })
    return entries


def complete(port, prompt):
    tokens, res = greedy(port, prompt, N_PREDICT, seed=1)
    steps = res["completion_probabilities"]
    margins = []
    for s in steps:
        top = s["top_logprobs"]
        assert top[0]["id"] == s["id"], "greedy token is not llama.cpp's top-1"
        margins.append(round(top[0]["logprob"] - top[1]["logprob"], 6))
    return {
        "prompt": prompt,
        "prompt_tokens": tokens,
        "output_tokens": [s["id"] for s in steps],
        "output_text": res["content"],
        "stop_type": res.get("stop_type"),
        "margins": margins,
    }


def main():
    if len(sys.argv) != 4 or sys.argv[2] != "--simd" or sys.argv[3] not in ("native", "avx2"):
        raise SystemExit(__doc__)
    oracle = os.path.abspath(sys.argv[1])
    simd = sys.argv[3]
    server = os.path.join(oracle, f"bin-{simd}", "llama-server")
    os.makedirs(OUT, exist_ok=True)

    rec = recipe(oracle)
    base_sha = hashlib.sha256(open(os.path.join(ROOT, "models", BASE), "rb").read()).hexdigest()
    with open(os.path.join(OUT, "recipe.json"), "w") as f:
        json.dump({"base_model": BASE, "base_sha256": base_sha,
                   "producer": "llama-quantize --allow-requantize BASE OUT TYPE (scripts/build-oracle.sh)",
                   "formats": rec}, f, indent=1)
        f.write("\n")

    # The SIMD path, from ggml itself (ggml_cpu_has_avx512) in the generator linked against the same
    # libraries as the server.
    kernels = json.loads(subprocess.run([os.path.join(oracle, f"bin-{simd}", "ggml-kernel-ref")],
                                        check=True, capture_output=True, text=True).stdout)
    path = kernels["simd_path"]
    assert path in ("avx512", "avx2"), path
    formats = []
    for t in TYPES:
        model = os.path.join(oracle, "models", f"SmolLM2-135M-Instruct.{t}.gguf")
        log_path = os.path.join(oracle, f"server-{simd}-{t}.log")
        with open(log_path, "w") as log:
            proc, port = start_server(server, model, THREADS, N_CTX, log, ["--no-repack"])
            try:
                cases = [complete(port, p) for p in PROMPTS]
            finally:
                proc.terminate()
                proc.wait()
        formats.append({"type": t, "cases": cases})
        print(t, [c["output_text"][:40] for c in cases], flush=True)

    kernels["producer"] = ("scripts/oracle/ggml-kernel-ref.c linked against the ggml of scripts/build-oracle.sh "
                           "--simd " + simd)
    with open(os.path.join(ROOT, "tests", "data", f"ggml-kernels.{path}.json"), "w") as f:
        json.dump(kernels, f)
        f.write("\n")

    out = os.path.join(OUT, f"greedy.{path}.json")
    with open(out, "w") as f:
        json.dump({
            "simd_path": path,
            "producer": {
                "llama_cpp": "llama-cpp-python==0.3.36 sdist tools over llama-cpp-sys-2 =0.1.161 "
                             "src/include/ggml (ggml 0.26.0), scripts/build-oracle.sh --simd " + simd,
                "server": f"llama-server -t {THREADS} -c {N_CTX} -np 1 -fa on --no-repack; /completion with "
                          f"the /tokenize ids, temperature 0, top_k 1, n_probs 2, n_predict {N_PREDICT}, "
                          "cache_prompt false",
            },
            "margins": "per generated step: llama.cpp's top-1 minus top-2 log-probability",
            "formats": formats,
        }, f, indent=1)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
