"""The `teacher/examples/bench.rs` workload through llama.cpp (the `llama-cpp-python` package's
low-level API): batch x (64-token prompt + exactly 256 greedy new tokens, no EOS), at batch 1, 8
and 32, with the same prompt ids (read from the JSON file the Rust bench writes) and the same
thread count. All sequences of a batch decode together, one `llama_decode` per step, as a
continuous-batching server would run them; the prompt is processed in one call (prefill).

    python llama_cpp_generate.py MODEL.gguf IDS.json THREADS

Prints, per batch, generated tokens/s over the whole run (prefill included, as the other two
engines are timed), the prefill rate on its own and the decode rate (the tokens after the
first, in the time after the prefill). The prompt is the Rust bench's, of whatever length it
wrote (`BENCH_PROMPT_TOKENS`). llama-cpp-python builds llama.cpp from
source (~20 min on 2 cores); on CPUs with AMX in VMs that do not enable it, build with
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" (teacher/bench/README.md).
"""

import ctypes
import json
import os
import sys
import time

import llama_cpp
import numpy as np

NEW_TOKENS = 256


@llama_cpp.llama_log_callback
def _quiet(level, text, user_data):
    """llama.cpp logs every tensor it loads; the benchmark prints only its own lines."""


def run(model, vocab_size: int, ids: list, batch: int, threads: int) -> tuple:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = batch * (len(ids) + NEW_TOKENS)
    params.n_batch = max(batch * len(ids), batch)
    # Long prompts go through in pieces of 2048 tokens (llama.cpp's own default is 512): one
    # piece of every prompt at batch 8 x 2048 would need gigabytes of attention scores.
    params.n_ubatch = min(params.n_batch, int(os.environ.get("LLAMA_UBATCH", "2048")))
    params.n_seq_max = batch
    params.n_threads = threads
    params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise SystemExit(f"llama.cpp could not make a context for batch {batch}")
    step = llama_cpp.llama_batch_init(params.n_batch, 0, 1)

    def decode(tokens: list) -> list:
        """`tokens`: (sequence, position, token, wants logits); returns each sequence's argmax."""
        step.n_tokens = len(tokens)
        for i, (seq, pos, tok, out) in enumerate(tokens):
            step.token[i] = tok
            step.pos[i] = pos
            step.n_seq_id[i] = 1
            step.seq_id[i][0] = seq
            step.logits[i] = out
        if llama_cpp.llama_decode(ctx, step) != 0:
            raise SystemExit("llama_decode failed")
        picks = []
        for i, (_, _, _, out) in enumerate(tokens):
            if out:
                row = llama_cpp.llama_get_logits_ith(ctx, i)
                logits = np.ctypeslib.as_array(
                    ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(vocab_size,))
                picks.append(int(logits.argmax()))
        return picks

    start = time.perf_counter()
    prompt = [(s, p, t, p == len(ids) - 1) for s in range(batch) for p, t in enumerate(ids)]
    nexts = decode(prompt)
    prefill = time.perf_counter() - start
    generated = batch
    for k in range(1, NEW_TOKENS):
        pos = len(ids) + k - 1
        nexts = decode([(s, pos, nexts[s], True) for s in range(batch)])
        generated += batch
    secs = time.perf_counter() - start
    llama_cpp.llama_batch_free(step)
    llama_cpp.llama_free(ctx)
    return generated, secs, batch * len(ids) / prefill


def main() -> None:
    model_path, ids_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ids = json.load(open(ids_path))
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        model_path.encode(), llama_cpp.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {model_path}")
    vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    print(f"model {model_path} · threads {threads} · llama-cpp-python {llama_cpp.__version__}")
    # BENCH_BATCHES=1,8 runs a subset, as the Rust bench does.
    batches = [int(b) for b in os.environ.get("BENCH_BATCHES", "1,8,32").split(",")]
    for batch in batches:
        generated, secs, prefill = run(model, vocab_size, ids, batch, threads)
        decode = (generated - batch) / (secs - batch * len(ids) / prefill)
        print(f"llama.cpp batch {batch:>2}: {generated} tokens in {secs:.2f}s "
              f"= {generated / secs:.1f} tok/s (prefill {prefill:.0f} tok/s, "
              f"decode {decode:.1f} tok/s)", flush=True)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
