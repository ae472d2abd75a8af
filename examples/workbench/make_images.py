"""Draw the robot-workbench images that examples/workbench/train.json and eval.json talk about.

    python examples/workbench/make_images.py            # -> examples/workbench/images/bench_XX.png
    vlm-sft data validate examples/workbench/train.json

Plain PIL drawings (no binary files in git): every object, count and state in the conversations
(screws in the tray, the soldering station's LED, the gauge needle, the gripper) is drawn here,
so the hand-written answers are true of the pictures.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (448, 336)
BENCH, GRAIN, WALL = (196, 160, 118), (176, 140, 100), (214, 218, 222)
STEEL, DARK = (170, 174, 180), (40, 40, 44)
COLORS = {
    "red": (205, 35, 35),
    "green": (40, 170, 70),
    "blue": (40, 90, 210),
    "yellow": (240, 200, 30),
    "black": (30, 30, 30),
    "orange": (235, 120, 30),
}


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def background() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A wooden bench top in front of a grey wall."""
    image = Image.new("RGB", SIZE, BENCH)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, SIZE[0], 48), fill=WALL)
    for y in range(62, SIZE[1], 23):  # wood grain
        draw.line((0, y, SIZE[0], y + 4), fill=GRAIN, width=2)
    return image, draw


# ---------------------------------------------------------------- tools
def screwdriver(d: ImageDraw.ImageDraw, x: int, y: int, handle: str = "red", tip: str = "phillips") -> None:
    d.rounded_rectangle((x, y, x + 60, y + 18), radius=7, fill=COLORS[handle], outline=DARK)
    d.rectangle((x + 60, y + 7, x + 135, y + 11), fill=STEEL)
    if tip == "phillips":
        d.line((x + 135, y + 4, x + 135, y + 14), fill=DARK, width=2)
        d.line((x + 131, y + 9, x + 139, y + 9), fill=DARK, width=2)
    else:
        d.rectangle((x + 133, y + 5, x + 137, y + 13), fill=DARK)


def wire_strippers(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.polygon([(x, y), (x + 70, y + 30), (x + 66, y + 40), (x - 4, y + 12)], fill=COLORS["red"], outline=DARK)
    d.polygon([(x, y + 70), (x + 70, y + 42), (x + 66, y + 32), (x - 4, y + 58)], fill=COLORS["red"], outline=DARK)
    d.polygon([(x + 68, y + 30), (x + 120, y + 30), (x + 120, y + 42), (x + 68, y + 42)], fill=STEEL, outline=DARK)
    d.ellipse((x + 62, y + 30, x + 76, y + 44), fill=DARK)


def multimeter(d: ImageDraw.ImageDraw, x: int, y: int, reading: str = "0.00", unit: str = "V") -> None:
    d.rounded_rectangle((x, y, x + 84, y + 140), radius=10, fill=COLORS["yellow"], outline=DARK, width=2)
    d.rectangle((x + 10, y + 10, x + 74, y + 44), fill=(150, 170, 140), outline=DARK)
    d.text((x + 14, y + 16), f"{reading} {unit}", fill=DARK, font=_font(17))
    d.ellipse((x + 20, y + 58, x + 64, y + 102), fill=DARK)
    d.line((x + 42, y + 80, x + 42, y + 62), fill=(230, 230, 230), width=3)
    d.ellipse((x + 16, y + 116, x + 28, y + 128), fill=COLORS["red"])
    d.ellipse((x + 56, y + 116, x + 68, y + 128), fill=COLORS["black"])


def probes(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    """Red and black test leads from a multimeter at (x, y) to the bench."""
    d.line((x + 22, y + 122, x - 40, y + 180, x - 90, y + 170), fill=COLORS["red"], width=4, joint="curve")
    d.line((x + 62, y + 122, x - 20, y + 190, x - 80, y + 200), fill=COLORS["black"], width=4, joint="curve")


def soldering_station(d: ImageDraw.ImageDraw, x: int, y: int, on: bool, temp: int = 350, iron: str = "holder") -> None:
    """Station with a temperature display and a status LED (green = on, dark = off); iron in its holder or not."""
    d.rounded_rectangle((x, y, x + 130, y + 80), radius=6, fill=(90, 94, 100), outline=DARK, width=2)
    d.rectangle((x + 12, y + 12, x + 92, y + 42), fill=(20, 30, 25), outline=DARK)
    if on:
        d.text((x + 18, y + 17), f"{temp}°C", fill=(120, 240, 140), font=_font(18))
    d.ellipse((x + 104, y + 18, x + 120, y + 34), fill=COLORS["green"] if on else (55, 55, 55), outline=DARK)
    d.ellipse((x + 40, y + 54, x + 60, y + 74), fill=(60, 60, 60))  # knob
    d.line((x + 130, y + 60, x + 170, y + 70), fill=DARK, width=3)  # cord to the iron
    hx, hy = x + 175, y + 10
    for i in range(5):  # coiled holder
        d.ellipse((hx + i * 9, hy + 30, hx + 14 + i * 9, hy + 62), outline=STEEL, width=2)
    if iron == "holder":
        _iron(d, hx - 5, hy + 8, hx + 70, hy + 60)
    else:
        _iron(d, x + 40, y + 170, x + 150, y + 190)


def _iron(d: ImageDraw.ImageDraw, x0: int, y0: int, x1: int, y1: int) -> None:
    mx, my = x0 + (x1 - x0) * 0.55, y0 + (y1 - y0) * 0.55
    d.line((x0, y0, mx, my), fill=STEEL, width=4)  # tip and barrel
    d.line((mx, my, x1, y1), fill=COLORS["blue"], width=12)  # handle


def screw(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.ellipse((x - 8, y - 8, x + 8, y + 8), fill=STEEL, outline=DARK)
    d.line((x - 5, y, x + 5, y), fill=DARK, width=2)
    d.line((x, y - 5, x, y + 5), fill=DARK, width=2)


def nut(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.regular_polygon((x, y, 11), 6, fill=STEEL, outline=DARK)
    d.ellipse((x - 5, y - 5, x + 5, y + 5), fill=BENCH, outline=DARK)


def bolt(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.regular_polygon((x, y, 10), 6, fill=STEEL, outline=DARK)
    d.rectangle((x + 9, y - 4, x + 55, y + 4), fill=STEEL, outline=DARK)
    for tx in range(x + 20, x + 55, 6):
        d.line((tx, y - 4, tx + 3, y + 4), fill=DARK)


def tray(d: ImageDraw.ImageDraw, x: int, y: int, w: int = 200, h: int = 110) -> None:
    d.rounded_rectangle((x, y, x + w, y + h), radius=8, fill=(60, 64, 74), outline=DARK, width=3)


def gauge(d: ImageDraw.ImageDraw, x: int, y: int, value: float, r: int = 90) -> None:
    """A 0-100 psi dial: green band 20-80, red zone 80-100, needle at `value`."""
    box = (x - r, y - r, x + r, y + r)
    d.ellipse(box, fill=(245, 245, 240), outline=DARK, width=4)

    def angle(v: float) -> float:  # 0 psi at lower left (225 deg), 100 psi at lower right (-45 deg)
        return math.radians(225 - 2.7 * v)

    for lo, hi, color in ((20, 80, "green"), (80, 100, "red")):  # PIL's angles run clockwise: negate
        d.arc(
            (x - r + 12, y - r + 12, x + r - 12, y + r - 12),
            -(225 - 2.7 * lo),
            -(225 - 2.7 * hi),
            fill=COLORS[color],
            width=8,
        )
    for v in range(0, 101, 10):
        a = angle(v)
        inner = r - 26 if v % 20 == 0 else r - 20
        d.line(
            (x + inner * math.cos(a), y - inner * math.sin(a), x + (r - 14) * math.cos(a), y - (r - 14) * math.sin(a)),
            fill=DARK,
            width=2,
        )
        if v % 20 == 0:
            d.text(
                (x + (r - 40) * math.cos(a), y - (r - 40) * math.sin(a)),
                str(v),
                fill=DARK,
                font=_font(12),
                anchor="mm",
            )
    d.text((x, y + r // 2), "psi", fill=DARK, font=_font(14), anchor="mm")
    a = angle(value)
    d.line((x, y, x + (r - 22) * math.cos(a), y - (r - 22) * math.sin(a)), fill=COLORS["red"], width=4)
    d.ellipse((x - 7, y - 7, x + 7, y + 7), fill=DARK)


def gripper(d: ImageDraw.ImageDraw, x: int, y: int, closed: bool, holding: str | None = None) -> None:
    """A two-finger robot gripper coming down from the top; closed fingers touch, or hold a cube."""
    d.rectangle((x - 18, 0, x + 18, y), fill=(120, 124, 130), outline=DARK, width=2)  # arm
    d.rectangle((x - 50, y, x + 50, y + 26), fill=(80, 84, 90), outline=DARK, width=2)  # wrist
    gap = 16 if closed and holding else 3 if closed else 40
    if holding:
        d.rectangle((x - gap, y + 50, x + gap, y + 82), fill=COLORS[holding], outline=DARK, width=2)
    for side in (-1, 1):
        fx = x + side * (gap + 7)
        d.rectangle((fx - 7, y + 26, fx + 7, y + 96), fill=STEEL, outline=DARK, width=2)


def cube(d: ImageDraw.ImageDraw, x: int, y: int, color: str = "blue") -> None:
    d.rectangle((x, y, x + 32, y + 32), fill=COLORS[color], outline=DARK, width=2)


def pcb(d: ImageDraw.ImageDraw, x: int, y: int, chips: int = 3, leds: tuple[str, ...] = ("red", "green")) -> None:
    d.rectangle((x, y, x + 260, y + 160), fill=(30, 120, 60), outline=(20, 80, 40), width=3)
    for i in range(6):  # traces
        d.line((x + 10, y + 20 + i * 24, x + 250, y + 20 + i * 24), fill=(190, 170, 90), width=1)
    for i in range(chips):
        cx = x + 20 + i * 70
        d.rectangle((cx, y + 40, cx + 50, y + 80), fill=COLORS["black"])
        for px in range(cx + 4, cx + 50, 8):
            d.line((px, y + 34, px, y + 86), fill=STEEL)
        d.rectangle((cx, y + 40, cx + 50, y + 80), fill=COLORS["black"])  # again, over the pins: only legs show
    for i, color in enumerate(leds):
        led(d, x + 40 + i * 60, y + 125, color)


def led(d: ImageDraw.ImageDraw, x: int, y: int, color: str) -> None:
    d.ellipse((x - 9, y - 9, x + 9, y + 9), fill=COLORS[color], outline=DARK, width=2)
    d.ellipse((x - 4, y - 6, x + 1, y - 2), fill=(255, 255, 255))


def hex_key(d: ImageDraw.ImageDraw, x: int, y: int, size: int) -> None:
    """An L-shaped hex key; `size` (1..5) sets its thickness and length."""
    length, width = 40 + 14 * size, 2 + 2 * size
    d.line((x, y, x, y + length, x + length // 3, y + length), fill=COLORS["black"], width=width, joint="curve")


def battery_aa(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.rectangle((x, y, x + 18, y + 62), fill=COLORS["orange"], outline=DARK, width=2)
    d.rectangle((x, y + 44, x + 18, y + 62), fill=COLORS["black"])
    d.rectangle((x + 5, y - 5, x + 13, y), fill=STEEL)


def battery_9v(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.rectangle((x, y, x + 34, y + 58), fill=COLORS["blue"], outline=DARK, width=2)
    d.text((x + 6, y + 22), "9V", fill=(255, 255, 255), font=_font(13))
    d.ellipse((x + 4, y - 8, x + 14, y + 2), fill=STEEL, outline=DARK)
    d.regular_polygon((x + 26, y - 3, 6), 6, fill=STEEL, outline=DARK)


def tape_measure(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.rounded_rectangle((x, y, x + 70, y + 70), radius=14, fill=COLORS["yellow"], outline=DARK, width=2)
    d.ellipse((x + 18, y + 18, x + 52, y + 52), fill=COLORS["black"])
    d.rectangle((x + 70, y + 56, x + 150, y + 66), fill=(240, 230, 120), outline=DARK)


def calipers(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.rectangle((x, y, x + 170, y + 14), fill=STEEL, outline=DARK)
    d.polygon([(x, y), (x + 14, y), (x + 14, y + 60), (x, y + 50)], fill=STEEL, outline=DARK)
    d.polygon([(x + 50, y), (x + 64, y), (x + 64, y + 50), (x + 50, y + 60)], fill=STEEL, outline=DARK)
    for tx in range(x + 70, x + 170, 6):
        d.line((tx, y, tx, y + 5), fill=DARK)


def stack_light(d: ImageDraw.ImageDraw, x: int, y: int, lit: str) -> None:
    """A red / yellow / green tower light on a robot cell's controller; only `lit` glows."""
    d.rectangle((x - 40, y + 150, x + 120, y + 250), fill=(150, 154, 160), outline=DARK, width=2)  # controller
    d.rectangle((x + 8, y + 136, x + 32, y + 150), fill=DARK)
    for i, color in enumerate(("red", "yellow", "green")):
        r, g, b = COLORS[color]
        fill = (r, g, b) if color == lit else (r // 3 + 40, g // 3 + 40, b // 3 + 40)
        d.rectangle((x, y + i * 45, x + 40, y + i * 45 + 44), fill=fill, outline=DARK, width=2)


def cable(d: ImageDraw.ImageDraw, points: tuple[int, ...], color: str = "black") -> None:
    d.line(points, fill=COLORS[color], width=5, joint="curve")


Drawing = list[tuple[Callable[..., None], tuple, dict]]


def _parts(positions: list[tuple[int, int]], fn: Callable[..., None]) -> Drawing:
    return [(fn, xy, {}) for xy in positions]


def _screws_in_tray(n: int, x: int = 120, y: int = 150) -> Drawing:
    spots = [(x + 30 + 35 * (i % 5), y + 30 + 45 * (i // 5)) for i in range(n)]
    return [(tray, (x, y), {"w": 200, "h": 110}), *_parts(spots, screw)]


SCENES: dict[str, Drawing] = {
    "bench_01.png": [
        (screwdriver, (30, 250), {"handle": "red"}),
        (wire_strippers, (190, 210), {}),
        (multimeter, (330, 90), {"reading": "0.00"}),
    ],
    "bench_02.png": [(soldering_station, (60, 110), {"on": True, "temp": 350})],
    "bench_03.png": [(soldering_station, (60, 110), {"on": False})],
    "bench_04.png": _screws_in_tray(7),
    "bench_05.png": _parts([(80, 120), (150, 170), (90, 240), (200, 110)], nut)
    + _parts([(260, 170), (280, 230), (250, 280)], bolt),
    "bench_06.png": [(gauge, (224, 180), {"value": 60})],
    "bench_07.png": [(gauge, (224, 180), {"value": 90})],
    "bench_08.png": [(gripper, (200, 110), {"closed": False}), (cube, (330, 250), {"color": "blue"})],
    "bench_09.png": [(gripper, (224, 110), {"closed": True, "holding": "blue"})],
    "bench_10.png": [(pcb, (90, 110), {"chips": 3, "leds": ("red", "green")})],
    "bench_11.png": [
        (multimeter, (300, 80), {"reading": "12.04"}),
        (probes, (300, 80), {}),
        (battery_9v, (120, 220), {}),
    ],
    "bench_12.png": [
        (soldering_station, (40, 70), {"on": True, "temp": 350, "iron": "bench"}),
        (cable, ((260, 300, 330, 250, 420, 280),), {}),
    ],
    "bench_13.png": [(hex_key, (70 + 70 * i, 100), {"size": i + 1}) for i in range(5)],
    "bench_14.png": _parts([(100, 150), (140, 150), (180, 150)], battery_aa) + [(battery_9v, (280, 150), {})],
    "bench_15.png": [
        (screwdriver, (30, 280), {"handle": "yellow", "tip": "flat"}),
        (multimeter, (330, 70), {}),
        (tape_measure, (40, 100), {}),
        (calipers, (160, 200), {}),
    ],
    "bench_16.png": [(wire_strippers, (40, 90), {}), *_screws_in_tray(3, x=210, y=190)],
    "bench_17.png": _screws_in_tray(5, x=210, y=190),
    "bench_18.png": [(stack_light, (200, 60), {"lit": "red"})],
    "bench_19.png": [(stack_light, (200, 60), {"lit": "green"})],
    "bench_20.png": [(tray, (60, 120), {"w": 330, "h": 150})]
    + [(led, (100 + 55 * i, 160), {"color": "red"}) for i in range(5)]
    + [(led, (100 + 55 * i, 200), {"color": "green"}) for i in range(3)]
    + [(led, (100 + 55 * i, 240), {"color": "yellow"}) for i in range(2)],
    # held out: eval.json
    "bench_21.png": [(soldering_station, (60, 110), {"on": True, "temp": 320})],
    "bench_22.png": _screws_in_tray(4),
    "bench_23.png": [(gripper, (224, 110), {"closed": True})],
    "bench_24.png": [(gauge, (224, 180), {"value": 30})],
}


def draw_scene(drawing: Drawing) -> Image.Image:
    image, draw = background()
    for fn, xy, kwargs in drawing:
        fn(draw, *xy, **kwargs)
    return image


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, drawing in SCENES.items():
        draw_scene(drawing).save(out / name)
    print(f"drew {len(SCENES)} images in {out}")
    return out


if __name__ == "__main__":
    main()
