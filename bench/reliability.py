"""Peak memory of `m3e encode` and `m3e index build` on a 50 MB single-line input against a normal input
(docs/reliability.md).

    .venv/bin/python bench/reliability.py [--model DIR] [--mb 50] [--serve]
    .venv/bin/python bench/reliability.py --index [--no-encode] [--index-model DIR] [--batch-chunks 256]

Each case runs `m3e encode -i FILE -o OUT.npy -q` in a child process and reads the child's own peak RSS from
``os.wait4`` (ru_maxrss), with its wall time. Cases: one short text (the floor: Python, torch and the model),
a normal file (2,000 lines of ~100 characters), one line of ``--mb`` MB (.txt), one .jsonl record whose text
is ``--mb`` MB, and the same .txt in windows mode. ``--serve`` also runs bench/serve_sizes.py (the 8 MB
request against a 2 KB one). ``--index`` adds `m3e index build -o IDX` (LanceDB, hybrid: vectors and BM25
words) of the normal file (2,000 documents) and of one ``--mb`` MB document (.txt and .jsonl), whose chunks are
written ``--batch-chunks`` at a time; ``--index-model`` picks its model (a 50 MB document is some 70,000
chunks: hours for the default model on a small CPU, minutes for a small one). Mixed Chinese and English text
throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MB = 1024 * 1024
UNIT = "向量检索模型把句子表示成向量，用余弦相似度比较。The quick brown fox jumps over the lazy dog. "


def _text_of(size: int) -> str:
    unit = UNIT.encode()
    return (unit * (size // len(unit) + 1))[:size].decode("utf-8", errors="ignore")


def _run(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit status) of one `m3e` child."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "m3e.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"m3e {' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    return usage.ru_maxrss / 1024, seconds, proc.returncode


def _table(rows: list[tuple[str, float, float]], normal: float, what: str) -> None:
    print(f"| {what} | peak RSS | vs the normal file | wall time |")
    print("| --- | ---: | ---: | ---: |")
    for label, peak, seconds in rows:
        print(f"| {label} | {peak:.0f} MB | {peak / normal:.2f}x | {seconds:.1f} s |")


def _measure(cases: list[tuple[str, list[str]]]) -> list[tuple[str, float, float]]:
    rows = []
    for label, case in cases:
        peak, seconds, _ = _run(case)
        rows.append((label, peak, seconds))
        print(f"{label}: peak {peak:.0f} MB, {seconds:.1f} s", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: m3e's default model)")
    parser.add_argument("--mb", type=int, default=50, help="size of the huge line in MB (default 50)")
    parser.add_argument("--serve", action="store_true", help="also run bench/serve_sizes.py")
    parser.add_argument("--index", action="store_true", help="also measure `m3e index build`")
    parser.add_argument("--no-encode", dest="encode", action="store_false", help="skip the `m3e encode` cases")
    parser.add_argument("--index-model", default=None, help="model of the index cases (default: --model)")
    parser.add_argument("--batch-chunks", type=int, default=256, help="--batch-chunks of the index cases")
    args = parser.parse_args()
    model = ["-m", args.model] if args.model else []
    index_model = ["-m", args.index_model] if args.index_model else model

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "one.txt").write_text("保险理赔需要哪些材料？\n", encoding="utf-8")
        (d / "normal.txt").write_text("".join(_text_of(300) + "\n" for _ in range(2000)), encoding="utf-8")
        huge = _text_of(args.mb * MB)
        (d / "huge.txt").write_text(huge + "\n", encoding="utf-8")
        (d / "huge.jsonl").write_text(json.dumps({"id": "huge", "text": huge}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
        del huge
        if args.encode:
            out = ["-o", str(d / "out.npy"), "-q", *model]
            rows = _measure([
                ("one short text", ["encode", "-i", str(d / "one.txt"), *out]),
                ("normal file: 2,000 lines of ~100 characters", ["encode", "-i", str(d / "normal.txt"), *out]),
                (f"one {args.mb} MB line (.txt)", ["encode", "-i", str(d / "huge.txt"), *out]),
                (f"one {args.mb} MB record (.jsonl)", ["encode", "-i", str(d / "huge.jsonl"), *out]),
                (f"one {args.mb} MB line (.txt), --long-text windows",
                 ["encode", "-i", str(d / "huge.txt"), "--long-text", "windows", *out]),
            ])
            _table(rows, rows[1][1], "input")
        if args.index:
            def build(corpus: str, name: str) -> list[str]:
                return ["index", "build", str(d / corpus), "--out", str(d / name), "--no-progress",
                        "--batch-chunks", str(args.batch_chunks), *index_model]

            rows = _measure([
                ("normal corpus: 2,000 documents of ~100 characters", build("normal.txt", "idx-normal")),
                (f"one {args.mb} MB document (.txt)", build("huge.txt", "idx-huge-txt")),
                (f"one {args.mb} MB document (.jsonl)", build("huge.jsonl", "idx-huge-jsonl")),
            ])
            _table(rows, rows[0][1], "`m3e index build` of")
    if args.serve:
        subprocess.run([sys.executable, str(Path(__file__).with_name("serve_sizes.py")), *model], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
