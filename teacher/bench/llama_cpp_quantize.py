"""Makes the GGUF files of the low-bit benchmark rows with llama.cpp's own quantizer
(`llama-quantize`, through the `llama-cpp-python` package), so the files are what users
download: llama.cpp's type mixes (Q3_K_M keeps some matrices in Q4_K/Q5_K, Q2_K some in Q3_K/
Q4_K; rows that are not whole 256-value blocks fall back to 32-value types).

    python llama_cpp_quantize.py SOURCE.gguf OUT.gguf TYPE [THREADS]

SOURCE is an F16/F32 GGUF (`distill export MODEL --gguf SOURCE.gguf --quant f16` makes one from
any checkpoint distill loads); TYPE is q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_m, q5_k_m or q6_k.
"""

import sys

import llama_cpp

FTYPES = {
    "q2_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    "q3_k_s": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_S,
    "q3_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "q3_k_l": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_L,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}


@llama_cpp.llama_log_callback
def _quiet(level, text, user_data):
    """llama.cpp logs every tensor it converts; only errors are printed."""
    if level == 4:  # GGML_LOG_LEVEL_ERROR
        sys.stderr.write(text.decode(errors="replace"))


def main() -> None:
    if len(sys.argv) not in (4, 5) or sys.argv[3] not in FTYPES:
        sys.exit(__doc__)
    source, out, kind = sys.argv[1:4]
    llama_cpp.llama_log_set(_quiet, None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = int(sys.argv[4]) if len(sys.argv) == 5 else 0
    if llama_cpp.llama_model_quantize(source.encode(), out.encode(), params) != 0:
        sys.exit(f"llama-quantize failed on {source}")
    print(f"wrote {out} ({kind})")


if __name__ == "__main__":
    main()
