"""The full scanner frame around the tissue region: dark border and burned-in-looking annotations.

Everything drawn here lies OUTSIDE the B-mode region, as on a real scanner screen (probe and
preset text, gain, a grey bar, a depth scale, the focus marker, a body marker). The text never
holds a name or an ID. Pillow's built-in font keeps it deterministic.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .study import PhantomStudy, PhantomView


def compose_frame(study: PhantomStudy, view: PhantomView) -> np.ndarray:
    """(rows, cols) uint8 frame with the view's image placed exactly at its region."""
    rows, cols = view.frame_shape
    x0, y0, x1, y1 = view.region
    frame = np.zeros((rows, cols), dtype=np.uint8)
    canvas = Image.fromarray(frame)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    side = "RT" if study.findings.side == "right" else "LT"
    plane = "TRANS" if view.name == "transverse" else "LONG"
    imaging = view.imaging
    lines_left = ["LLNM PHANTOM", "L12-5 THYROID", f"{side} {plane}"]
    for i, text in enumerate(lines_left):
        draw.text((4, 4 + 12 * i), text, fill=200, font=font)
    draw.text((max(4, x1 - 120), 4), f"G{imaging.get('gain', 0):.0f} DR{imaging.get('dynamic_range_db', 0):.0f}",
              fill=200, font=font)
    draw.text((max(4, x1 - 120), 16), "12.0MHz FR 28", fill=200, font=font)
    # depth scale right of the region: a tick every 5 mm, longer every 10 mm
    sp = view.spacing_mm[0]
    if x1 + 12 < cols:
        depth_mm = 0.0
        while True:
            y = y0 + int(round(depth_mm / sp))
            if y > y1:
                break
            length = 8 if depth_mm % 10 == 0 else 4
            draw.line([(x1 + 4, y), (x1 + 4 + length, y)], fill=180)
            if depth_mm % 10 == 0 and depth_mm > 0 and x1 + 30 < cols:
                draw.text((x1 + 14, y - 5), f"{depth_mm / 10:.0f}", fill=180, font=font)
            depth_mm += 5.0
        focus = y0 + int(round(18.0 / sp))
        if focus < y1:
            draw.polygon([(x1 + 2, focus), (x1 + 8, focus - 4), (x1 + 8, focus + 4)], fill=220)
    # body marker below the region
    if rows - y1 > 14:
        bx, by = x0 + 8, y1 + 4
        draw.rectangle([bx, by, bx + 18, min(rows - 2, by + 10)], outline=160)
        draw.text((bx + 24, by), f"{side} lobe", fill=160, font=font)
    frame = np.asarray(canvas).copy()
    if x0 >= 12:  # grey bar left of the region
        ramp = np.linspace(255, 0, y1 - y0 + 1).astype(np.uint8)
        frame[y0:y1 + 1, x0 - 16:x0 - 9] = ramp[:, None]
    frame[y0:y1 + 1, x0:x1 + 1] = view.image
    return frame
