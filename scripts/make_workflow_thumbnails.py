#!/usr/bin/env python
"""Make the Browse-Templates thumbnails (`workflows/<name>.jpg`) by running every shipped
workflow (with the bundled default models it names) in a real ComfyUI on a photograph,
and showing the input beside what the workflow outputs.

    python scripts/make_workflow_thumbnails.py --comfyui ~/ComfyUI --image assets/barn.png

The photograph is given to ComfyUI as `example.png`, the only input file the workflows
use (a fresh ComfyUI has it). Each thumbnail is cut into vertical bands, each band taken
from its own image at its own place: the input (bicubic to the output size) on the left,
then the outputs in order (a t-sweep from t = 0 to 1), each labelled. The server runs on
loopback in a temporary folder, with only this pack loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfyui_driver import ComfyServer, workflow_to_prompt  # noqa: E402

WORKFLOWS = ROOT / "workflows"


def outputs_of(entry: dict, prompt: dict, output_dir: Path) -> list[tuple[str, Image.Image]]:
    """(label, image) for every saved image, in the workflow's node order; the label says what made it."""
    images = []
    for node_id, node_out in sorted(entry["outputs"].items(), key=lambda item: int(item[0])):
        source = prompt[prompt[node_id]["inputs"]["images"][0]]
        kind, inputs = source["class_type"], source["inputs"]
        files = [f for f in node_out.get("images", []) if f.get("type") == "output"]  # not the previews
        if kind == "OFTSRTSweep":
            labels = [f"t = {v.strip()}" for v in inputs["t_values"].split(",") if v.strip()]
        elif kind == "OFTSRUpscale":
            labels = [f"student, t = {inputs['t']:g}"]
        elif kind == "OFTSRTeacherSampler":
            labels = [f"teacher, {inputs['steps']} {inputs['solver']} steps"]
        elif kind == "ImageUpscaleWithModel":  # fed by OFTSR as Upscale Model
            labels = [f"Upscale Image (using Model), t = {prompt[inputs['upscale_model'][0]]['inputs']['t']:g}"]
        elif kind == "OFTSRRegionalTradeoff":
            labels = [f"t = {inputs['t_outside']:g} top, {inputs['t_inside']:g} bottom"]
        else:
            labels = [kind]
        labels = labels * len(files) if len(labels) != len(files) else labels
        for label, im in zip(labels, files):
            images.append((label, Image.open(output_dir / im.get("subfolder", "") / im["filename"]).convert("RGB")))
    return images


def compose(bands: list[tuple[str, Image.Image]], width: int) -> Image.Image:
    """Vertical bands, band i cut from image i at its own place, a thin line between, a
    label at the foot of each; scaled to `width`."""
    w, h = bands[-1][1].size
    sheet = Image.new("RGB", (w, h))
    n = len(bands)
    for i, (_, im) in enumerate(bands):
        x0, x1 = i * w // n, (i + 1) * w // n
        sheet.paste(im.resize((w, h), Image.BICUBIC).crop((x0, 0, x1, h)), (x0, 0))
    sheet = sheet.resize((width, round(h * width / w)), Image.LANCZOS)
    draw = ImageDraw.Draw(sheet, "RGBA")
    font = ImageFont.load_default(size=13)
    for i, (label, _) in enumerate(bands):
        x0, x1 = i * width // n, (i + 1) * width // n
        if i:
            draw.line([(x0, 0), (x0, sheet.height)], fill=(255, 255, 255, 220), width=2)
        # the whole label, or its start where the band is too narrow ("input 128x96, bicubic" -> "input")
        for text in (label, label.split(",")[0], label.split(" ")[0]):
            box = draw.textbbox((0, 0), text, font=font)
            tw, th = box[2] - box[0], box[3] - box[1]
            if tw <= x1 - x0 - 8:
                break
        label = text
        x, y = x0 + max(2, (x1 - x0 - tw) // 2), sheet.height - th - 8
        draw.rectangle([x - 3, y - 3, x + tw + 3, y + th + 4], fill=(0, 0, 0, 150))
        draw.text((x, y - box[1]), label, font=font, fill=(255, 255, 255, 255))
    return sheet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", required=True, help="a ComfyUI checkout with its requirements installed")
    p.add_argument("--image", default=str(ROOT / "assets" / "barn.png"), help="the input photograph")
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

        pack_name = "oftsr_thumbnails"
        pack = Path(args.comfyui) / "custom_nodes" / pack_name
        pack.symlink_to(ROOT, target_is_directory=True)
        try:
            with ComfyServer(Path(args.comfyui), work=work, input_dir=inputs, output_dir=outputs,
                             only_custom_node=pack_name, max_lifetime=4 * 3600) as server:
                info = server.get("/object_info", timeout=60)
                for path in sorted(WORKFLOWS.glob("*.json")):
                    if args.only and path.stem not in args.only:
                        continue
                    prompt = workflow_to_prompt(json.loads(path.read_text(encoding="utf-8")), info)
                    entry = server.wait(server.queue(prompt), timeout=3600)
                    if entry.get("status", {}).get("status_str") != "success":
                        raise SystemExit(f"{path.name} failed: {entry.get('status')}")
                    thumb = compose([(f"input {image.width}x{image.height}, bicubic", image),
                                     *outputs_of(entry, prompt, outputs)], args.width)
                    thumb.save(path.with_suffix(".jpg"), quality=88)
                    print(f"wrote {path.with_suffix('.jpg')} ({thumb.width}x{thumb.height})", flush=True)
        finally:
            pack.unlink()


if __name__ == "__main__":
    main()
