"""What scripts/make-format-reference.py and scripts/make-repack-reference.py share: llama-server
from the oracle build (scripts/build-oracle.sh) on a free local port, and llama.cpp's greedy
completion of a raw prompt with the top-2 log-probabilities of each step.
"""

import json
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def start_server(binary, model, threads, n_ctx, log, extra_args=()):
    """llama-server on MODEL (one slot, flash attention, seed 1, no warm-up) with its output in LOG,
    once /health answers: (process, port)."""
    port = free_port()
    args = [binary, "-m", model, "--port", str(port), "--host", "127.0.0.1", "-t", str(threads),
            "-c", str(n_ctx), "-np", "1", "-fa", "on", "--no-warmup", "--seed", "1", *extra_args]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited on {model}")
        time.sleep(0.2)
    raise SystemExit("llama-server did not come up")


def greedy(port, prompt, n_predict, **extra):
    """llama.cpp's token ids for PROMPT (no BOS) and the /completion response continuing them
    greedily for N_PREDICT tokens with the top-2 log-probabilities per step (EXTRA: more request
    fields)."""
    tokens = post(port, "/tokenize", {"content": prompt, "add_special": False})["tokens"]
    res = post(port, "/completion", {
        "prompt": tokens, "n_predict": n_predict, "temperature": 0, "top_k": 1, "n_probs": 2,
        "cache_prompt": False, "return_tokens": True, **extra,
    })
    return tokens, res
