"""lm-evaluation-harness against `distill serve`, beside the same weights in transformers.

Runs one multiple-choice task twice through lm-evaluation-harness (`lm_eval.simple_evaluate`):
once with its `hf` model (transformers, the checkpoint's HF folder, f32, CPU) and once with its
`local-completions` model pointed at `distill serve` on the same folder (token-id prompts,
`echo` + `logprobs` + `max_tokens` 1: the harness's log-likelihood request); then a few of the
same questions answered greedily (`generate_until`: raw prompts, `stop`, temperature 0) by both.
Prints one JSON line: both accuracies, the largest difference between the two log-likelihoods
of any choice, how many greedy flags differ, and how many greedy answers are the same text. Not run in CI (it needs lm-eval: a venv of its own, ~1 min; see
teacher/bench/README.md).

The task is local (no hub): GSM8K test questions with four numeric answers each, the right one
and three near it, scored by the log-likelihood of " <number>" after "Answer:".

    python teacher/bench/lm_eval_serve.py --distill target/release/distill \
        --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --limit 100
"""
import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def write_task(folder, gsm8k, limit, seed=0):
    rng = random.Random(seed)
    rows = []
    for line in open(gsm8k):
        doc = json.loads(line)
        answer = int(re.sub(r"[^0-9-]", "", doc["answer"].split("####")[-1]))
        wrong = {answer + 1, answer - 1, answer * 2 if answer != 0 else 7} - {answer}
        choices = [answer] + sorted(wrong)[:3]
        rng.shuffle(choices)
        rows.append({"question": doc["question"], "choices": [f" {c}" for c in choices],
                     "label": choices.index(answer)})
        if len(rows) == limit:
            break
    data = os.path.join(folder, "mc.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    # Both tasks read the same questions with the same prompt.
    common = f"""dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
"""
    tasks = {
        "distill_gsm8k_mc": """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
""",
        "distill_gsm8k_gen": """output_type: generate_until
doc_to_target: "{{choices[label]}}"
generation_kwargs:
  until: ["\\n\\n", "Question:"]
  max_gen_toks: 48
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
""",
    }
    for name, rest in tasks.items():
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            f.write(f"task: {name}\n{common}{rest}")
    return len(rows)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(distill, folder, port):
    server = subprocess.Popen([distill, "serve", folder, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"distill serve stopped: {server.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                return server, json.load(r)["data"][0]["id"]
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit("distill serve did not answer within 120 s")


def loglikelihoods(result, task):
    """Per document, per choice: (log-likelihood, greedy) as the harness logged them."""
    return {s["doc_id"]: [tuple(r[0]) for r in s["resps"]] for s in result["samples"][task]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--distill", required=True)
    ap.add_argument("--model", required=True, help="a GGUF file or an HF folder distill loads")
    ap.add_argument("--gsm8k", default=os.path.join(os.path.dirname(__file__),
                                                     "../../../shared/data/gsm8k/test.jsonl"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gen-limit", type=int, default=20,
                    help="questions answered greedily (48 tokens at most) by both")
    args = ap.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager
    import torch

    torch.set_num_threads(os.cpu_count())
    work = tempfile.mkdtemp(prefix="distill-lm-eval-")
    folder = args.model
    if not os.path.isdir(folder):
        folder = os.path.join(work, "hf")
        subprocess.run([args.distill, "convert", args.model, folder], check=True,
                       stdout=subprocess.DEVNULL)
    docs = write_task(work, args.gsm8k, args.limit)
    tasks = TaskManager(include_path=work)
    task, gen = "distill_gsm8k_mc", "distill_gsm8k_gen"
    limits = {task: args.limit, gen: args.gen_limit}

    def evaluate(model, model_args):
        started = time.time()
        out = {}
        for name in (task, gen):
            out[name] = lm_eval.simple_evaluate(
                model=model, model_args=model_args, tasks=[name], task_manager=tasks,
                batch_size=args.batch, log_samples=True, limit=limits[name])
        return out, time.time() - started

    hf, hf_s = evaluate("hf", f"pretrained={folder},dtype=float32,device=cpu")

    port = free_port()
    server, name = serve(args.distill, folder, port)
    try:
        served, served_s = evaluate(
            "local-completions",
            (f"model={name},base_url=http://127.0.0.1:{port}/v1/completions,"
             f"tokenizer_backend=huggingface,tokenizer={folder},"
             f"num_concurrent=1,max_retries=1,tokenized_requests=True"))
    finally:
        server.terminate()
        server.wait()

    a, b = loglikelihoods(hf[task], task), loglikelihoods(served[task], task)
    diffs = [abs(x[0] - y[0]) for d in a for x, y in zip(a[d], b[d])]
    greedy = sum(x[1] != y[1] for d in a for x, y in zip(a[d], b[d]))
    texts = lambda r: {s["doc_id"]: s["resps"][0][0] for s in r[gen]["samples"][gen]}
    ta, tb = texts(hf), texts(served)
    print(json.dumps({
        "check": "lm_eval_serve", "model": args.model, "documents": docs,
        "choices": len(diffs),
        "acc_transformers": hf[task]["results"][task]["acc,none"],
        "acc_distill_serve": served[task]["results"][task]["acc,none"],
        "max_loglikelihood_diff": max(diffs), "mean_loglikelihood_diff": sum(diffs) / len(diffs),
        "greedy_flags_differ": greedy,
        "greedy_texts": len(ta), "greedy_texts_equal": sum(ta[d] == tb.get(d) for d in ta),
        "greedy_texts_empty": sum(not t.strip() for t in ta.values()),
        "greedy_text_first": ta[min(ta)][:80],
        "seconds_transformers": round(hf_s, 1), "seconds_distill_serve": round(served_s, 1),
        "lm_eval": lm_eval.__version__,
    }))


if __name__ == "__main__":
    main()
