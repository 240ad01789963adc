#!/usr/bin/env python
"""Make the Browse-Templates thumbnails (`workflows/<name>.jpg`) by running every shipped
workflow (with the bundled default models it names) in a real ComfyUI, and saving what
it outputs.

    python scripts/make_workflow_thumbnails.py --comfyui ~/ComfyUI --image assets/landscape.png

The server runs on loopback in a temporary folder, with only this pack loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfyui_driver import ComfyServer, workflow_to_prompt  # noqa: E402

WORKFLOWS = ROOT / "workflows"


def outputs_of(server: ComfyServer, entry: dict, output_dir: Path) -> list[Image.Image]:
    images = []
    for node_out in entry["outputs"].values():
        for im in node_out.get("images", []):
            images.append(Image.open(output_dir / im.get("subfolder", "") / im["filename"]).convert("RGB"))
    return images


def compose(images: list[Image.Image], width: int) -> Image.Image:
    """One image as is; two side by side; more (a t-sweep) as vertical bands, each cut from
    its own image at its own place, so the thumbnail reads from t = 0 (left) to 1 (right)."""
    if len(images) > 2 and len({im.size for im in images}) == 1:
        w, h = images[0].size
        sheet = images[0].copy()
        for i, im in enumerate(images):
            x0, x1 = i * w // len(images), (i + 1) * w // len(images)
            sheet.paste(im.crop((x0, 0, x1, h)), (x0, 0))
        return sheet.resize((width, round(h * width / w)), Image.LANCZOS)
    h = max(im.height for im in images)
    sheet = Image.new("RGB", (sum(im.width for im in images), h), "white")
    x = 0
    for im in images:
        sheet.paste(im, (x, 0))
        x += im.width
    return sheet.resize((width, round(sheet.height * width / sheet.width)), Image.LANCZOS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", required=True, help="a ComfyUI checkout with its requirements installed")
    p.add_argument("--image", default=str(ROOT / "assets" / "landscape.png"))
    p.add_argument("--width", type=int, default=512, help="thumbnail width")
    p.add_argument("--only", nargs="+", help="workflow names (without .json) to redo")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs, outputs = work / "input", work / "output"
        for d in (inputs, outputs):
            d.mkdir(parents=True)
        image = Image.open(args.image).convert("RGB")
        image.save(inputs / "example.png")
        mask = np.zeros((image.height, image.width, 3), np.uint8)
        mask[image.height * 2 // 3:] = 255  # realism on the foreground texture, fidelity elsewhere
        Image.fromarray(mask).save(inputs / "example_mask.png")

        pack_name = "oftsr_thumbnails"
        pack = Path(args.comfyui) / "custom_nodes" / pack_name
        pack.symlink_to(ROOT, target_is_directory=True)
        try:
            with ComfyServer(Path(args.comfyui), work=work, input_dir=inputs, output_dir=outputs,
                             only_custom_node=pack_name) as server:
                info = server.get("/object_info", timeout=60)
                for path in sorted(WORKFLOWS.glob("*.json")):
                    if args.only and path.stem not in args.only:
                        continue
                    prompt = workflow_to_prompt(json.loads(path.read_text()), info)
                    entry = server.wait(server.queue(prompt), timeout=1800)
                    if entry.get("status", {}).get("status_str") != "success":
                        raise SystemExit(f"{path.name} failed: {entry.get('status')}")
                    thumb = compose(outputs_of(server, entry, outputs), args.width)
                    thumb.save(path.with_suffix(".jpg"), quality=85)
                    print(f"wrote {path.with_suffix('.jpg')} ({thumb.width}x{thumb.height})")
        finally:
            pack.unlink()


if __name__ == "__main__":
    main()
