"""Build sr-shrink's image sets from openly licensed sources, with no download beyond Debian packages.

* ``--eval``: the bundled eval split (committed under ``sr_shrink/assets/eval``): photographs from
  scikit-image's wheel (public domain / CC0) and held-out wallpapers of Debian's lomiri-wallpapers-16.04
  and mate-backgrounds packages, centre-cropped to at most 384 x 384 px, sides divisible by 12.
* ``--train DIR``: the teacher's training split, the remaining photographs of those packages and of
  plasma-workspace-wallpapers, downscaled to a short side of 768 px. No image of the eval split is used.

Usage: python scripts/make_images.py --eval --train data/train   (needs scikit-image, apt-get, dpkg-deb)
Users never need to run it: the eval split is committed and the default teacher is shipped trained.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO / "sr_shrink" / "assets" / "eval"
PACKAGES = ["lomiri-wallpapers-16.04", "mate-backgrounds", "plasma-workspace-wallpapers"]
BG = "usr/share/backgrounds"
SKIMAGE_EVAL = {  # file in skimage/data -> licence line
    "astronaut.png": "NASA (Eileen Collins), public domain; via scikit-image",
    "chelsea.png": "Stefan van der Walt, CC0; via scikit-image",
    "coffee.png": "Rachel Michetti, CC0; via scikit-image",
    "rocket.jpg": "SpaceX / NASA, public domain; via scikit-image",
    "hubble_deep_field.jpg": "NASA / ESA Hubble, public domain; via scikit-image",
}
DEBIAN_EVAL = {  # path inside the unpacked packages -> licence line
    f"{BG}/seeding_by_Clements_Engelhardt.jpg": "Clemens Engelhardt, CC0-1.0; Debian lomiri-wallpapers-16.04",
    f"{BG}/sunset_by_Aitzol_Berasategi.jpg": "Aitzol Berasategi, CC-BY-4.0; Debian lomiri-wallpapers-16.04",
    f"{BG}/Dragonfly_by_Bolly.jpg": "Bolly, CC-BY-SA-4.0; Debian lomiri-wallpapers-16.04",
    f"{BG}/Bridge_by_Sander_Klootwijk.jpg": "Sander Klootwijk, CC-BY-SA-4.0; Debian lomiri-wallpapers-16.04",
    f"{BG}/mate/nature/LadyBird.jpg": "Charles Barbin, GPL-2+; Debian mate-backgrounds",
}
DEBIAN_TRAIN = [
    f"{BG}/{n}.jpg" for n in (
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "greentock_by_Peter_Nerlich",
        "aitzgorri_by_Aitzol_Berasategi", "friends_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
        "picosdeeuropa_by_Aitzol_Berasategi", "umang_by_Abhishek_Mudgal", "Picture_0B_by_freespace",
        "life_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich")
] + [
    f"{BG}/mate/nature/{n}.jpg" for n in (
        "Garden", "Dune", "Wood", "Aqua", "TwoWings", "Storm", "GreenMeadow", "RainDrops", "Blinds",
        "FreshFlower", "YellowFlower")
] + [
    f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg" for n in (
        "FallenLeaf", "Path", "DarkestHour", "Autumn", "summer_1am", "EveningGlow")
]


def unpack_packages(dest: Path) -> Path:
    """Download and unpack the wallpaper packages into ``dest``; return the unpacked root."""
    root = dest / "root"
    for name in PACKAGES:
        subprocess.run(["apt-get", "download", name], cwd=dest, check=True, capture_output=True)
    for deb in sorted(dest.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def resize_short_side(im: Image.Image, short: int) -> Image.Image:
    """Return ``im`` downscaled (bicubic, antialiased) so its short side is ``short`` px (never upscaled)."""
    s = short / min(im.size)
    if s >= 1:
        return im
    return im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC, reducing_gap=None)


def centre_crop(im: Image.Image, size: int = 384, multiple: int = 12) -> Image.Image:
    """Return the centre crop of ``im`` of at most ``size`` px a side, sides divisible by ``multiple``."""
    w = min(size, im.width) // multiple * multiple
    h = min(size, im.height) // multiple * multiple
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


def make_eval(root: Path) -> None:
    """Write the eval split's PNGs and its SOURCES.md licence table."""
    import skimage

    EVAL_DIR.mkdir(parents=True, exist_ok=True)
    lines = ["# Eval split: sources and licences", "", "| file | source and licence |", "|---|---|"]
    sk = Path(skimage.__file__).parent / "data"
    items = [(sk / f, lic, 1024) for f, lic in SKIMAGE_EVAL.items()]
    items += [(root / p, lic, 768) for p, lic in DEBIAN_EVAL.items()]
    for src, lic, short in items:
        im = centre_crop(resize_short_side(Image.open(src).convert("RGB"), short))
        name = src.stem.split("_by_")[0].lower() + ".png"
        im.save(EVAL_DIR / name)
        lines.append(f"| {name} | {lic} (centre crop{', downscaled' if short < 1024 else ''}) |")
    (EVAL_DIR / "SOURCES.md").write_text("\n".join(lines) + "\n")


def make_train(root: Path, out: Path) -> None:
    """Write the training split (short side 768 px) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for p in DEBIAN_TRAIN:
        im = resize_short_side(Image.open(root / p).convert("RGB"), 768)
        name = Path(p).stem if "wallpapers" not in p else Path(p).parts[3]
        im.save(out / f"{name}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", action="store_true", help="rebuild the committed eval split")
    ap.add_argument("--train", type=Path, help="write the training split into this folder")
    ap.add_argument("--unpacked", type=Path, help="use already unpacked packages at this root")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.unpacked or unpack_packages(Path(tmp))
        if args.eval:
            make_eval(root)
        if args.train:
            make_train(root, args.train)


if __name__ == "__main__":
    main()
