"""Repack a wheel as an LZMA zip, optionally without folders the kuberl driver never loads.

Carried files are limited to 64 MiB per GPU-machine call. LZMA roughly halves the size of the native
libraries that make up most of ray and smg, and ray loses what a local driver never starts: the Java
worker (a 31 MB jar), the dashboard UI, RLlib, Tune, Serve, Data, Train and Ray LLM. The result is a zip
that hack/gpu/unpack_wheels.py extracts on the GPU machine (no pip needed there).
    python3 hack/gpu/repack.py WHEEL OUT.zip [--drop ray/jars/ ...]
"""

from __future__ import annotations

import argparse
import zipfile

RAY_UNUSED = (
    "ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/tune/", "ray/serve/", "ray/data/",
    "ray/train/", "ray/llm/", "ray/air/", "ray/workflow/", "ray/cpp/",
)


def repack(src_path: str, out_path: str, drop: tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy ``src_path`` to ``out_path`` with LZMA, skipping names under ``drop``; (kept, dropped)."""
    kept = dropped = 0
    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(out_path, "w", zipfile.ZIP_LZMA) as out:
        for info in src.infolist():
            if drop and info.filename.startswith(drop):
                dropped += 1
                continue
            data = src.read(info.filename)
            if drop and info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(ln for ln in lines if not ln.startswith(drop)) + "\n").encode()
            fresh = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            fresh.external_attr = info.external_attr  # keeps the exec bits (ray's gcs_server, raylet)
            fresh.compress_type = zipfile.ZIP_LZMA
            out.writestr(fresh, data)
            kept += 1
    return kept, dropped


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("out")
    parser.add_argument("--drop", nargs="*", default=[], help="path prefixes to leave out")
    parser.add_argument("--ray-unused", action="store_true", help="drop ray's unused folders")
    a = parser.parse_args()
    prefixes = tuple(a.drop) + (RAY_UNUSED if a.ray_unused else ())
    k, d = repack(a.wheel, a.out, prefixes)
    print(f"repacked {a.wheel} -> {a.out}: {k} files kept, {d} dropped")
