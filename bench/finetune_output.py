"""What `m3e finetune --output DIR` leaves on disk: the size of DIR and of everything else the run wrote.

    python bench/finetune_output.py [--model default] [-- extra finetune flags]

Fine-tunes MODEL for a few steps on generated pairs (80 records, batch 16, a checkpoint every 2 steps) in a
temporary directory and prints, in MB, the output directory (and its largest entries) and every other
directory the run created beside it. Run with ``PYTHONPATH=<an older checkout>/src`` to measure an earlier
layout the same way.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = "天气 很好 我们 公园 北京 上海 城市 旅游 吃饭 喝茶 咖啡 读书 写字 模型 向量 检索 问题 答案 保险 医疗".split()


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    model = argv[argv.index("--model") + 1] if "--model" in argv else "default"
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "pairs.jsonl"
        with data.open("w", encoding="utf-8") as fh:
            for i in range(80):
                q = "".join(rng.sample(WORDS, 3)) + str(i)
                fh.write(json.dumps({"text": q, "text_pos": q[:4] + "".join(rng.sample(WORDS, 2))},
                                    ensure_ascii=False) + "\n")
        out = root / "my-model"
        cmd = [sys.executable, "-m", "m3e.cli", "finetune", model, str(data), "--output", str(out),
               "--batch-size", "16", "--save-steps", "2", "--no-progress", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        print(f"finetune {model} {' '.join(extra)}".strip())
        print(f"  {out.name}/: {size_mb(out):.1f} MB")
        for entry in sorted(out.iterdir(), key=size_mb, reverse=True)[:4]:
            print(f"    {entry.name}: {size_mb(entry):.1f} MB")
        for other in sorted(p for p in root.iterdir() if p not in (out, data)):
            print(f"  {other.name}/: {size_mb(other):.1f} MB (beside the output)")


if __name__ == "__main__":
    main()
