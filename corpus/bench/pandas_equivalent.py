#!/usr/bin/env python3
"""The corpus chain of `benches/chain` (verify -> filter -> dedup -> decontaminate -> stats)
done the way a careful pandas user would: pyarrow reads the same shards batch by batch (a whole
800k-row corpus of 6 KB traces does not fit a DataFrame comfortably), per-row Python logic with
the same checks and defaults as the Rust passes, parquet (zstd) out, dropped rows with a
`drop_reason` column in a side folder.

The verifier here is simpler than the Rust one (last boxed answer, numeric or string equality),
and there are no charts; everything else matches. Usage:

    python pandas_equivalent.py --dir /tmp/distill-corpus-bench

Reads DIR/corpus and DIR/eval.jsonl, writes DIR/pandas/{verified,filtered,deduped,clean}.
"""

import argparse
import json
import os
import re
import resource
import shutil
import time
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BATCH = 10_000
ROWS_PER_SHARD = 50_000

# ----------------------------------------------------------------------------- io


def input_files(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        return [os.path.join(folder, s["file"]) for s in json.load(f)["shards"]]


def batches(folder, columns=None):
    for path in input_files(folder):
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=BATCH, columns=columns):
            yield batch.to_pandas()


class ShardSink:
    def __init__(self, folder, schema):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.schema = folder, schema
        self.writer, self.rows, self.index, self.shards = None, 0, 0, []

    def write(self, df):
        if len(df) == 0:
            return
        if self.writer is None:
            name = f"part-{self.index:05}.parquet"
            self.writer = pq.ParquetWriter(
                os.path.join(self.folder, name), self.schema, compression="zstd", compression_level=1
            )
            self.shards.append({"file": name, "rows": 0})
        table = pa.Table.from_pandas(df, schema=self.schema, preserve_index=False)
        self.writer.write_table(table, row_group_size=2048)
        self.rows += len(df)
        self.shards[-1]["rows"] += len(df)
        if self.rows >= ROWS_PER_SHARD:
            self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer, self.rows = None, 0
            self.index += 1

    def finish(self):
        self.close()
        with open(os.path.join(self.folder, "manifest.json"), "w") as f:
            json.dump({"shards": self.shards}, f)


class Pass:
    """Kept rows to OUT, dropped rows (with `drop_reason`) to OUT/dropped."""

    def __init__(self, out, schema):
        shutil.rmtree(out, ignore_errors=True)
        self.kept = ShardSink(out, schema)
        self.dropped = ShardSink(os.path.join(out, "dropped"), schema.append(pa.field("drop_reason", pa.string())))
        self.rows_in = 0
        self.reasons = Counter()

    def write(self, df, reasons):
        self.rows_in += len(df)
        reasons = pd.Series(reasons, index=df.index, dtype=object)
        keep = reasons.isna()
        self.kept.write(df[keep])
        dropped = df[~keep].copy()
        dropped["drop_reason"] = reasons[~keep]
        self.reasons.update(dropped["drop_reason"])
        self.dropped.write(dropped)

    def finish(self):
        self.kept.finish()
        self.dropped.finish()


def schema_of(folder):
    return pq.read_schema(input_files(folder)[0])


# ----------------------------------------------------------------------------- verify

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text):
    at = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if at < 0:
        return None
    start = text.index("{", at) + 1
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None


def extract(text):
    boxed = last_boxed(text)
    if boxed:
        return boxed
    m = re.search(r"answer is[:\s]*([^\n]+?)(?:\.\s|\.?$)", text, re.IGNORECASE)
    if m:
        return m.group(1).strip()
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize(s):
    s = s.replace("$", "").replace(",", "").replace(" ", "").replace("\\%", "").replace("%", "")
    return s[:-2] if s.endswith(".0") else s


def equivalent(a, b):
    a, b = normalize(a), normalize(b)
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def verify(d, out):
    p = Pass(out, schema_of(d))
    for df in batches(d):
        answers, verdicts = [], []
        for completion, reference in zip(df["completion"], df["reference_answer"]):
            a = extract(completion)
            answers.append(a)
            verdicts.append(None if reference is None else (a is not None and equivalent(a, reference)))
        df["final_answer"] = answers
        df["correct"] = pd.array(verdicts, dtype="boolean")
        p.write(df, [None] * len(df))
    p.finish()
    return p


# ----------------------------------------------------------------------------- filter

FOREIGN = {
    "Cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "Arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f]"),
    "Hebrew": re.compile(r"[\u0590-\u05ff]"),
    "Devanagari": re.compile(r"[\u0900-\u097f]"),
    "Thai": re.compile(r"[\u0e00-\u0e7f]"),
    "Han": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "Hangul": re.compile(r"[\u1100-\u11ff\uac00-\ud7af]"),
}
LATIN = re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]")
MAX_FOREIGN, MAX_PARAGRAPH, NGRAM, MAX_REPEATS = 4, 3000, 10, 10


def mixed(text):
    counts = [len(LATIN.findall(text))] + [len(r.findall(text)) for r in FOREIGN.values()]
    return sum(counts) - max(counts) > MAX_FOREIGN


def longest_paragraph(text):
    return max((len(p) for p in re.split(r"\n[ \t]*\n", text)), default=0)


def max_repeats(text):
    words = text.split()
    if len(words) < NGRAM:
        return 0
    grams = Counter(zip(*(words[i:] for i in range(NGRAM))))
    return max(grams.values())


def check(reasoning, completion, messages, correct, finish, tokens):
    if finish == "length":
        return "truncated"
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    if assistant:
        text = assistant[-1]
        at = text.rfind("<think>")
        if at >= 0 and "</think>" not in text[at:]:
            return "unclosed_think"
    if not completion.strip() and reasoning.strip():
        return "unclosed_think"
    if correct is pd.NA or correct is None:
        return "unverified"
    if not correct:
        return "incorrect"
    if mixed(reasoning + completion):
        return "language_mixing"
    if "```" in reasoning:
        return "code_block"
    if max(longest_paragraph(reasoning), longest_paragraph(completion)) > MAX_PARAGRAPH:
        return "long_paragraph"
    if max_repeats(reasoning) > MAX_REPEATS:
        return "repetition"
    return None


def filter_pass(d, out):
    p = Pass(out, schema_of(d))
    for df in batches(d):
        reasons = [
            check(*row)
            for row in zip(
                df["reasoning"], df["completion"], df["messages"], df["correct"], df["finish_reason"],
                df["completion_tokens"],
            )
        ]
        p.write(df, reasons)
    p.finish()
    return p


# ----------------------------------------------------------------------------- dedup

WORD = re.compile(r"\w+")
NUM_PERM, BANDS, THRESHOLD = 64, 16, 0.8
_rng = np.random.default_rng(0)
MULTS = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
ADDS = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def signature(text):
    words = [w.lower() for w in WORD.findall(text)]
    n = min(3, len(words)) or 1
    shingles = {hash(tuple(words[i : i + n])) for i in range(max(1, len(words) - n + 1))}
    x = np.array(list(shingles), dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = (np.outer(MULTS, x) + ADDS[:, None]) >> np.uint64(32)
    return h.min(axis=1)


def dedup(d, out):
    p = Pass(out, schema_of(d))
    seen, problems, tables, sigs, names = set(), {}, {}, [], []
    rows = NUM_PERM // BANDS
    for df in batches(d):
        reasons = []
        for pid, prompt, reasoning, completion in zip(df["problem_id"], df["prompt"], df["reasoning"], df["completion"]):
            if pid not in problems:
                sig = signature(prompt)
                keys = [(b, sig[b * rows : (b + 1) * rows].tobytes()) for b in range(BANDS)]
                best = None
                for key in keys:
                    for entry in tables.get(key, ())[-32:]:
                        sim = float(np.mean(sigs[entry] == sig))
                        if sim >= THRESHOLD and (best is None or sim > best):
                            best = sim
                if best is not None:
                    problems[pid] = "near_duplicate_prompt"
                else:
                    problems[pid] = None
                    for key in keys:
                        tables.setdefault(key, []).append(len(sigs))
                    sigs.append(sig)
            if problems[pid]:
                reasons.append(problems[pid])
                continue
            key = hash("\x1f".join(" ".join(t.lower().split()) for t in (prompt, reasoning, completion)))
            if key in seen:
                reasons.append("duplicate")
            else:
                seen.add(key)
                reasons.append(None)
        p.write(df, reasons)
    p.finish()
    return p


# ----------------------------------------------------------------------------- decontaminate


def ngrams(text, n=8):
    words = [w.lower() for w in WORD.findall(text)]
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def decontaminate(d, out, eval_path):
    grams = set()
    with open(eval_path) as f:
        for line in f:
            grams |= ngrams(json.loads(line)["question"])
    p = Pass(out, schema_of(d))
    for df in batches(d):
        p.write(df, ["contaminated" if ngrams(t) & grams else None for t in df["prompt"]])
    p.finish()
    return p


# ----------------------------------------------------------------------------- stats


def stats(d, dropped):
    cols = ["problem_id", "source", "reasoning", "completion", "correct", "finish_reason", "completion_tokens"]
    parts = []
    for df in batches(d, cols):
        parts.append(
            pd.DataFrame(
                {
                    "problem_id": df["problem_id"],
                    "source": df["source"],
                    "correct": df["correct"],
                    "finish_reason": df["finish_reason"],
                    "reasoning_chars": df["reasoning"].str.len(),
                    "completion_chars": df["completion"].str.len(),
                    "completion_tokens": df["completion_tokens"],
                }
            )
        )
    t = pd.concat(parts, ignore_index=True)
    per_source = t.groupby("source")["correct"].agg(["size", "count", "sum"])
    lengths = t[["reasoning_chars", "completion_chars", "completion_tokens"]].describe(percentiles=[0.5, 0.9, 0.99])
    reasons = Counter()
    for folder in dropped:
        for df in batches(os.path.join(folder, "dropped"), ["drop_reason"]):
            reasons.update(df["drop_reason"])
    return {
        "rows": len(t),
        "problems": t["problem_id"].nunique(),
        "per_source": per_source.to_dict(),
        "finish_reasons": t["finish_reason"].value_counts().to_dict(),
        "lengths": lengths.to_dict(),
        "dropped": dict(reasons),
    }


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    d = args.dir
    o = os.path.join(d, "pandas")
    os.makedirs(o, exist_ok=True)
    chain = time.time()
    steps = [
        ("verify", lambda: verify(os.path.join(d, "corpus"), os.path.join(o, "verified"))),
        ("filter", lambda: filter_pass(os.path.join(o, "verified"), os.path.join(o, "filtered"))),
        ("dedup", lambda: dedup(os.path.join(o, "filtered"), os.path.join(o, "deduped"))),
        (
            "decontaminate",
            lambda: decontaminate(os.path.join(o, "deduped"), os.path.join(o, "clean"), os.path.join(d, "eval.jsonl")),
        ),
    ]
    for name, step in steps:
        start = time.time()
        p = step()
        secs = time.time() - start
        kept = p.rows_in - sum(p.reasons.values())
        print(f"pandas {name:<14} {p.rows_in:>9} rows in {secs:>7.1f} s  {p.rows_in / secs:>9.0f} rows/s  kept {kept:>9}", flush=True)
    start = time.time()
    s = stats(os.path.join(o, "clean"), [os.path.join(o, x) for x in ("filtered", "deduped", "clean")])
    secs = time.time() - start
    print(f"pandas {'stats':<14} {s['rows']:>9} rows in {secs:>7.1f} s  {s['rows'] / secs:>9.0f} rows/s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pandas chain total {time.time() - chain:.1f} s, peak RSS {peak:.0f} MiB, dropped {s['dropped']}", flush=True)


if __name__ == "__main__":
    main()
