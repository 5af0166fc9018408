"""Time and peak memory of LIIF upscaling (EDSR-baseline-LIIF shape, random weights) beside bicubic.

Every case runs in a fresh process: the model and the input are built, the kernel's peak-RSS
counter is reset (``/proc/self/clear_refs``), the upscale runs as the ImplicitUpscale node runs it
(tiles of 192 input pixels, chunks of 32768 queries, a float32 output buffer), and the rise of the
peak resident set (VmHWM) over the resident set before the call is reported. glibc's mmap
threshold is fixed at 128 KiB, so that freed tensors leave the resident set and the peak follows
live memory rather than the allocator's caching. The goal is that, beyond the output buffer,
memory does not grow with the output size.

    .venv/bin/python bench/implicit_decoding.py                # 128^2 input: x2.5 and x8 (CPU-sized)
    .venv/bin/python bench/implicit_decoding.py --input 512    # 512^2 -> 1280^2 and -> 4096^2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 2 ** 20


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def edsr_baseline_liif(seed: int = 0):
    """EDSR-baseline-LIIF as released (16 blocks, 64 features, MLP [256] * 4), seeded weights."""
    import torch

    from cupscale.liif.model import ImplicitImageFunction, LIIFHead
    from cupscale.liif.encoders import EDSR
    torch.manual_seed(seed)
    encoder = EDSR(n_resblocks=16, n_feats=64)
    return ImplicitImageFunction(encoder, LIIFHead(64, [256] * 4), encoder.receptive_radius).eval()


def run_case(method: str, size: int, out: int, threads: int) -> dict:
    """One measurement, in this process."""
    import torch
    import torch.nn.functional as F

    from cupscale.liif import model as liif
    torch.set_num_threads(threads)
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    model = edsr_baseline_liif() if method == "liif" else None
    Path("/proc/self/clear_refs").write_text("5")
    before = memory_kb("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        if method == "liif":
            result = liif.to_image_(liif.render(model, liif.to_signed(image), (out, out), tile=192))
        else:
            result = F.interpolate(image.movedim(-1, 1), size=(out, out), mode="bicubic").clamp_(0, 1)
    seconds = time.perf_counter() - start
    peak = (memory_kb("VmHWM") - before) * 1024
    return {"method": method, "input": size, "output": out, "seconds": seconds, "peak": peak,
            "buffer": result.numel() * result.element_size()}


def measure(method: str, size: int, out: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--case", method, str(size), str(out), "--threads", str(threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=int, default=128, help="input side in pixels (512 for the full-size run)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.case:
        print(json.dumps(run_case(a.case[0], int(a.case[1]), int(a.case[2]), a.threads)))
        return
    outputs = (round(a.input * 2.5), a.input * 8)
    rows = [measure(method, a.input, out, a.threads) for method in ("bicubic", "liif") for out in outputs]
    print(f"input {a.input}x{a.input}, CPU, {a.threads} thread(s); peak = rise of peak RSS during the call")
    print("| method  | output      | time s | peak MB | output buffer MB | peak - buffer MB |")
    print("|---------|-------------|--------|---------|------------------|------------------|")
    for r in rows:
        print(f"| {r['method']:<7} | {r['output']:>5}x{r['output']:<5} | {r['seconds']:6.2f} | {r['peak'] / MB:7.1f} "
              f"| {r['buffer'] / MB:16.1f} | {(r['peak'] - r['buffer']) / MB:16.1f} |")
    small, large = (r for r in rows if r["method"] == "liif")
    print(f"LIIF peak at {large['output']}^2 / peak at {small['output']}^2 = {large['peak'] / small['peak']:.2f} "
          f"(goal <= 1.5); beyond the buffer: {(large['peak'] - large['buffer']) / MB:.1f} MB vs "
          f"{(small['peak'] - small['buffer']) / MB:.1f} MB")


if __name__ == "__main__":
    main()
