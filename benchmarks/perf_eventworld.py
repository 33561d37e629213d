"""EventWorld rendering speed on one process: images/s (scene + drawing + JPEG encode) per image size.

Target: >= 300 images/s per core at 128 px. No peer library renders this world, so the table compares the
stages instead: scene building alone, full `render_sample`, and the share of the JPEG encode.

    python benchmarks/perf_eventworld.py [--json] [--num N] [--sizes 64 128 224 256]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from align.ontology import Ontology  # noqa: E402
from data_gen.eventworld import build_scene, event_type_for, render_sample  # noqa: E402

TARGET_128 = 300.0


def _rate(fn, num: int) -> float:
    fn(0)  # warm caches (backgrounds, fonts) the way a long run would
    start = time.perf_counter()
    for i in range(1, num + 1):
        fn(i)
    return num / (time.perf_counter() - start)


def run(num: int, sizes: list[int], seed: int = 0) -> dict:
    onto = Ontology.default()
    types = onto.type_names
    rows = []
    for size in sizes:
        full = _rate(lambda i, s=size: render_sample(i, seed, s, onto), num)
        jpegs = [Image.open(io.BytesIO(render_sample(i, seed, size, onto).image)).convert("RGB") for i in range(8)]

        def encode(i: int, jpegs: list = jpegs) -> None:
            jpegs[i % 8].save(io.BytesIO(), "JPEG", quality=90)

        enc = _rate(encode, num)
        rows.append({"image_size": size, "images_per_s": round(full, 1), "ms_per_image": round(1000 / full, 3),
                     "jpeg_encode_share": round(full / enc, 3)})
    scene = _rate(lambda i: build_scene(i, seed, event_type_for(i, seed, types), onto), num)
    at128 = next((r["images_per_s"] for r in rows if r["image_size"] == 128), None)
    return {
        "benchmark": "eventworld_render", "processes": 1, "num": num, "python": platform.python_version(),
        "rows": rows, "scene_only_per_s": round(scene, 1), "target_images_per_s_at_128": TARGET_128,
        "meets_target": at128 is not None and at128 >= TARGET_128,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--num", type=int, default=500, help="images per size (default 500)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224, 256])
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num must be >= 1")
    result = run(args.num, args.sizes)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"EventWorld render speed, 1 process, {args.num} images per size (render + JPEG q90)")
    print(f"{'size':>6} {'images/s':>10} {'ms/image':>10} {'JPEG share':>11}")
    for r in result["rows"]:
        print(f"{r['image_size']:>6} {r['images_per_s']:>10.1f} {r['ms_per_image']:>10.3f} "
              f"{r['jpeg_encode_share']:>10.0%}")
    print(f"scene building alone: {result['scene_only_per_s']:.0f} scenes/s")
    print(f"target >= {TARGET_128:.0f} images/s at 128 px: {'met' if result['meets_target'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
