"""Generate a small synthetic dataset in the exact PASCAL VOC 2012 (+SBD) layout.

Usage::

    python -m tools.data.make_synthetic_voc --out DIR --num_train N --num_val M --size S --seed K [--overwrite]

Written under ``DIR``::

    JPEGImages/<id>.jpg                 RGB, S x S, JPEG quality 95
    SegmentationClass/<id>.png          8-bit VOC-palette label PNG: 0 bg, k+1 class k, 255 void
    SegmentationClassAug/<id>.png       same bytes (the VOC+SBD layout has this folder)
    Annotations/<id>.xml                VOC XML (filename, size, segmented, object/name/pose/
                                        truncated/difficult/bndbox, sometimes a ``part``)
    ImageSets/Segmentation/{train,val,train_aug}.txt   train_aug = train; val disjoint
    classes.txt                         one class name per line

Ids are ``synth_<6-digit index>``: train = indices 0..N-1, val = N..N+M-1. Image ``i`` is drawn
from ``np.random.default_rng([seed, i])`` only, so identical arguments give identical bytes.

Classes (label id = index + 1), told apart by shape *and* texture; each has a preferred hue
(+-0.12 of the hue circle, so colour is only a weak cue) and random saturation / value:

===  ========  =========================================  =========================================
id   name      shape                                      texture
===  ========  =========================================  =========================================
1    disc      filled circle                              straight two-tone stripes, random angle
2    box       rotated rectangle, aspect 0.55-1           checkerboard aligned with the box
3    triangle  rotated, jittered equilateral triangle     dark polka dots on a plain base
4    star      5-point star, inner/outer radius 0.45-0.6  smooth linear gradient between two hues
5    ring      annulus, thickness 0.35-0.55 of radius     coarse high-contrast blotchy noise
===  ========  =========================================  =========================================

What makes weak supervision non-trivial: cluttered backgrounds (two-colour linear gradient,
low-frequency shading, pixel noise, 3-8 random thin lines); 0-2 distractor shapes *under* the
objects and sometimes one *over* them (ellipses and lobed blobs, flat-shaded or softly mottled,
labelled background); 1-3 objects per image (classes drawn with replacement) that may overlap
(later ones on top; the label map shows what is visible) and be truncated by the border; object
extent 18-45 % of the image side; antialiased edges (coverage from a signed distance) and a
slight Gaussian blur. Placement is re-drawn (up to 30 times) so every object keeps at least half
of its area visible and at least 60 % of it inside the image; so every XML object's class is
present in the label map. The label map carries a VOC-like void band (255) where two different
labels meet, ``band_width(S)`` px wide: 1 px at 64 px, 2 px at 128 px (the pixels with a
differing 4-neighbour), 6 px at 512 px (VOC's is about 5 px at 500 px).

Everything is drawn with numpy on coordinate grids restricted to each shape's bounding window;
1000 images of 128 px take a few seconds.
"""
from __future__ import annotations

import argparse
import colorsys
import math
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lib.datasets.classes import SYNTHETIC_CLASSES
from lib.errors import UserError, run_main
from lib.io import atomic_path, save_label_png

CLASS_HUES = {"disc": 0.0, "box": 0.62, "triangle": 0.33, "star": 0.14, "ring": 0.8}
# Each demo class is one shape with one texture; tools.experiments.pretrain_trunk combines them more freely.
CLASS_TEXTURES = {"disc": "stripes", "box": "checker", "triangle": "dots", "star": "gradient",
                  "ring": "blotchy"}
SHAPES = ("disc", "box", "triangle", "star", "ring", "hexagon", "cross", "crescent")
TEXTURES = ("stripes", "checker", "dots", "gradient", "blotchy", "concentric")
HUE_JITTER = 0.12
SIZE_RANGE = (0.18, 0.45)        # object extent / image side
MIN_VISIBLE = 0.5                # fraction of an object's in-image area that must stay visible
MIN_INSIDE = 0.6                 # fraction of an object's area that must lie inside the image
MIN_SIZE = 32
OUTPUTS = ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets")

_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) pixel-centre coordinates, float32 (S, S); cached per size."""
    if size not in _GRIDS:
        c = np.arange(size, dtype=np.float32) + 0.5
        _GRIDS[size] = (np.broadcast_to(c[:, None], (size, size)), np.broadcast_to(c[None, :], (size, size)))
    return _GRIDS[size]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(c1: np.ndarray, c2: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per-pixel blend (h, w, 3) = c1 (1 - m) + c2 m = c1 + (c2 - c1) m."""
    return c1 + (c2 - c1) * m[..., None]


# ---------------------------------------------------------------- signed distances (px, < 0 inside)
def _polygon_sdf(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (V, 2) (x, y): min distance to the edges, sign by
    the even-odd crossing rule."""
    d2 = np.full(x.shape, np.inf, np.float32)
    inside = np.zeros(x.shape, bool)
    for (ax, ay), (bx, by) in zip(verts, np.roll(verts, -1, axis=0)):
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        if ay != by:
            crosses = (ay > y) != (by > y)
            x_int = ax + (y - ay) * ex / ey
            inside ^= crosses & (x < x_int)
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


@dataclass
class Shape:
    """A shape with its analytic extent/area, a signed distance and a local (rotated) frame."""

    kind: str
    cx: float
    cy: float
    angle: float
    extent: float                                   # bounding radius (px)
    area: float                                     # analytic area (px^2)
    params: dict = field(default_factory=dict)
    verts: np.ndarray | None = None

    def window(self, size: int, pad: int = 2) -> tuple[slice, slice] | None:
        """Slices of the image covering the shape plus ``pad`` px (room for the soft edge)."""
        x0, x1 = max(0, int(self.cx - self.extent) - pad), min(size, int(self.cx + self.extent) + pad + 1)
        y0, y1 = max(0, int(self.cy - self.extent) - pad), min(size, int(self.cy + self.extent) + pad + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in the shape's frame: centred, rotated by -angle."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        return c * dx + s * dy, -s * dx + c * dy

    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = self.params
        if self.verts is not None:
            return _polygon_sdf(x, y, self.verts)
        r = np.sqrt((x - self.cx) ** 2 + (y - self.cy) ** 2)
        if self.kind == "circle":
            return r - p["r"]
        if self.kind == "annulus":
            return np.abs(r - p["rm"]) - p["t"] / 2
        if self.kind == "crescent":              # disc minus an offset disc (a distance bound)
            r2 = np.sqrt((x - self.cx - p["ox"]) ** 2 + (y - self.cy - p["oy"]) ** 2)
            return np.maximum(r - p["R"], p["r"] - r2)
        u, v = self.local(x, y)
        if self.kind == "ellipse":
            a, b = p["a"], p["b"]
            k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            grad = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2) / np.maximum(k, 1e-6)
            return (k - 1.0) / np.maximum(grad, 1e-6)   # first-order distance to the ellipse
        if self.kind == "blob":
            th = np.arctan2(v, u)
            rr = p["r"] * (1 + p["a1"] * np.sin(2 * th + p["p1"]) + p["a2"] * np.sin(3 * th + p["p2"]))
            return r - rr
        raise ValueError(f"unknown shape kind {self.kind}")

    def bbox(self) -> tuple[float, float, float, float]:
        if self.verts is not None:
            return (*self.verts.min(0), *self.verts.max(0))
        return self.cx - self.extent, self.cy - self.extent, self.cx + self.extent, self.cy + self.extent


def _regular_verts(cx, cy, radii, angle, n, jitter=None) -> np.ndarray:
    th = angle + 2 * math.pi * np.arange(n) / n
    if jitter is not None:
        th = th + jitter
    return np.stack([cx + radii * np.cos(th), cy + radii * np.sin(th)], 1).astype(np.float32)


def _shoelace(v: np.ndarray) -> float:
    x, y = v[:, 0].astype(np.float64), v[:, 1].astype(np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs of radii r1, r2 whose centres are d apart."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = r1 * r1 * math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    a2 = r2 * r2 * math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    return a1 + a2 - 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))


def object_shape(name: str, rng: np.random.Generator, size: int, centred: bool = False,
                 size_range: tuple[float, float] = SIZE_RANGE) -> Shape:
    """A random shape of kind ``name`` (one of :data:`SHAPES`) with extent ``size_range`` x size.

    The demo classes use the first five kinds; hexagon, cross and crescent exist for the
    pretraining corpus (tools.experiments.pretrain_trunk).
    """
    d = rng.uniform(*size_range) * size                  # extent across the object
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    if centred:
        cx, cy = size / 2, size / 2
    ang = rng.uniform(0, 2 * math.pi)
    if name == "disc":
        r = d / 2
        return Shape("circle", cx, cy, ang, r, math.pi * r * r, {"r": r})
    if name == "ring":
        ro = d / 2
        t = ro * rng.uniform(0.35, 0.55)
        return Shape("annulus", cx, cy, ang, ro, math.pi * (ro ** 2 - (ro - t) ** 2), {"rm": ro - t / 2, "t": t})
    if name == "box":
        lw, lh = d / 2, d / 2 * rng.uniform(0.55, 1.0)
        c, s = math.cos(ang), math.sin(ang)
        corners = np.array([[-lw, -lh], [lw, -lh], [lw, lh], [-lw, lh]], np.float32)
        verts = np.stack([cx + c * corners[:, 0] - s * corners[:, 1],
                          cy + s * corners[:, 0] + c * corners[:, 1]], 1).astype(np.float32)
        return Shape("polygon", cx, cy, ang, math.hypot(lw, lh), 4 * lw * lh, verts=verts)
    if name == "triangle":
        rad = d / math.sqrt(3)                            # side length ~ d
        verts = _regular_verts(cx, cy, rad * rng.uniform(0.9, 1.1, 3), ang, 3, rng.uniform(-0.15, 0.15, 3))
        return Shape("polygon", cx, cy, ang, float(np.abs(verts - [cx, cy]).max() * 1.5),
                     _shoelace(verts), verts=verts)
    if name == "star":
        ro = d / 2 * 1.1
        radii = np.tile([ro, ro * rng.uniform(0.45, 0.6)], 5)
        verts = _regular_verts(cx, cy, radii, ang, 10)
        return Shape("polygon", cx, cy, ang, ro, _shoelace(verts), verts=verts)
    if name == "hexagon":
        verts = _regular_verts(cx, cy, np.full(6, d / 2), ang, 6)
        return Shape("polygon", cx, cy, ang, d / 2, _shoelace(verts), verts=verts)
    if name == "cross":                                   # plus sign, arm width 0.5-0.8 of d/2
        ln, w = d / 2, d / 2 * rng.uniform(0.25, 0.4)
        local = np.array([[w, w], [ln, w], [ln, -w], [w, -w], [w, -ln], [-w, -ln], [-w, -w],
                          [-ln, -w], [-ln, w], [-w, w], [-w, ln], [w, ln]], np.float32)
        c, s = math.cos(ang), math.sin(ang)
        verts = np.stack([cx + c * local[:, 0] - s * local[:, 1],
                          cy + s * local[:, 0] + c * local[:, 1]], 1).astype(np.float32)
        return Shape("polygon", cx, cy, ang, math.hypot(ln, w), _shoelace(verts), verts=verts)
    if name == "crescent":
        big = d / 2
        small, off = big * rng.uniform(0.7, 0.85), big * rng.uniform(0.35, 0.5)
        p = {"R": big, "r": small, "ox": off * math.cos(ang), "oy": off * math.sin(ang)}
        return Shape("crescent", cx, cy, ang, big, math.pi * big * big - _lens_area(big, small, off), p)
    raise ValueError(f"unknown shape {name}")


def _distractor_shape(rng: np.random.Generator, size: int) -> Shape:
    d = rng.uniform(0.12, 0.35) * size
    cx, cy = rng.uniform(0.0, 1.0, 2) * size
    ang = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:
        a, b = d / 2, d / 2 * rng.uniform(0.35, 0.8)
        return Shape("ellipse", cx, cy, ang, a, math.pi * a * b, {"a": a, "b": b})
    r, a1, a2 = d / 2, rng.uniform(0.05, 0.18), rng.uniform(0.0, 0.1)
    p = {"r": r, "a1": a1, "a2": a2, "p1": rng.uniform(0, 6.3), "p2": rng.uniform(0, 6.3)}
    return Shape("blob", cx, cy, ang, r * (1 + a1 + a2), math.pi * r * r, p)


# ---------------------------------------------------------------------------------------- textures
def _class_texture(name, shape: Shape, x, y, rng, f: float) -> np.ndarray:
    """(h, w, 3) colours of demo class ``name`` over window coordinates (x, y); f = size / 128."""
    return object_texture(CLASS_TEXTURES[name], CLASS_HUES[name], shape, x, y, rng, f)


def object_texture(name: str, hue: float, shape: Shape, x, y, rng, f: float) -> np.ndarray:
    """(h, w, 3) texture ``name`` (one of :data:`TEXTURES`) around the preferred ``hue`` (+-
    HUE_JITTER) over window coordinates (x, y); f = size / 128."""
    hue = hue + rng.uniform(-HUE_JITTER, HUE_JITTER)
    c1 = _hsv(hue, rng.uniform(0.45, 0.95), rng.uniform(0.55, 0.95))
    u, v = shape.local(x, y)
    if name == "stripes":
        period, a = rng.uniform(7, 10) * f, rng.uniform(0, math.pi)
        s = np.sin(2 * math.pi * (u * math.cos(a) + v * math.sin(a)) / period)
        return _mix(c1, c1 * rng.uniform(0.15, 0.35), _smoothstep(-0.35, 0.35, s))
    if name == "checker":
        cell = rng.uniform(5, 8) * f
        m = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        return _mix(c1, c1 * 0.3 + 0.7 * rng.uniform(0.85, 1.0), m)
    if name == "dots":
        sp = rng.uniform(7, 9) * f
        du, dv = (u % sp) - sp / 2, (v % sp) - sp / 2
        m = np.clip(0.3 * sp - np.sqrt(du * du + dv * dv) + 0.5, 0.0, 1.0)
        return _mix(c1, c1 * rng.uniform(0.1, 0.3), m)
    if name == "gradient":
        c2 = _hsv(hue + rng.choice([-1, 1]) * rng.uniform(0.08, 0.18), rng.uniform(0.3, 0.9), rng.uniform(0.85, 1.0))
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (u * math.cos(a) + v * math.sin(a)) / (2 * shape.extent), 0.0, 1.0)
        return _mix(c1, c2, t)
    if name == "blotchy":
        block = rng.uniform(3, 4.5) * f
        h, w = x.shape
        coarse = rng.random((max(2, int(h / block) + 2), max(2, int(w / block) + 2))).astype(np.float32)
        n = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        return _mix(c1, c1 * rng.uniform(0.15, 0.35), _smoothstep(0.4, 0.6, n))
    if name == "concentric":                  # rings around the shape's centre
        period = rng.uniform(6, 9) * f
        s = np.sin(2 * math.pi * np.sqrt(u * u + v * v) / period + rng.uniform(0, 2 * math.pi))
        return _mix(c1, c1 * rng.uniform(0.15, 0.35), _smoothstep(-0.35, 0.35, s))
    raise ValueError(f"unknown texture {name}")


def _distractor_texture(shape: Shape, x, y, rng) -> np.ndarray:
    c1 = _hsv(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.3, 0.95))
    u, v = shape.local(x, y)
    if rng.random() < 0.5:      # flat colour with soft directional shading
        shade = 1.0 + 0.12 * np.clip(v / max(shape.extent, 1.0), -1, 1)
        return c1 * shade[..., None]
    h, w = x.shape               # soft low-contrast mottling
    coarse = rng.random((3, 3)).astype(np.float32)
    n = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    c2 = _hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.95))
    return _mix(c1, 0.7 * c1 + 0.3 * c2, np.clip(n, 0, 1))


def _background(rng: np.random.Generator, size: int, f: float,
                lines: tuple[int, int] = (3, 9)) -> np.ndarray:
    yy, xx = _grid(size)
    ca = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.85))
    cb = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.85))
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip(0.5 + ((xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)) / size, 0, 1)
    img = _mix(ca, cb, t)
    g = int(rng.integers(3, 8))
    shade = cv2.resize(rng.uniform(-0.12, 0.12, (g, g)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    img += shade[..., None]
    for _ in range(int(rng.integers(*lines))):  # clutter lines (antialiased segments)
        (ax, ay), (bx, by) = rng.uniform(-0.2, 1.2, (2, 2)) * size
        width = rng.uniform(0.8, 2.0) * f
        ex, ey = bx - ax, by - ay
        tt = np.clip(((xx - ax) * ex + (yy - ay) * ey) / max(ex * ex + ey * ey, 1e-6), 0, 1)
        dist = np.sqrt((xx - ax - ex * tt) ** 2 + (yy - ay - ey * tt) ** 2)
        alpha = np.clip(width / 2 - dist + 0.5, 0, 1) * rng.uniform(0.5, 0.9)
        col = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.2, 0.9))
        on = alpha > 0                              # thin line: blend only the pixels it touches
        img[on] += (col - img[on]) * alpha[on][:, None]
    img += 0.03 * rng.standard_normal(img.shape, dtype=np.float32)
    return img.astype(np.float32)


# --------------------------------------------------------------------------------------- rendering
@dataclass
class _Layer:
    shape: Shape
    cls: int                          # class index, -1 for a distractor
    win: tuple[slice, slice]
    sd: np.ndarray                    # signed distance over the window

    @property
    def mask(self) -> np.ndarray:
        return self.sd < 0


def band_width(size: int) -> int:
    """Void band width in px: round(1.5 S / 128 + 0.5), at least 1 (64 px: 1, 128: 2, 512: 6)."""
    return max(1, round(1.5 * size / 128 + 0.5))


def void_band(label: np.ndarray, width: int) -> np.ndarray:
    """Boolean (H, W) band of ``width`` px along every boundary between two different labels.

    width 1: the pixels whose right or lower neighbour differs (one pixel, on the upper/left
    side); width >= 2: the pixels with any differing 4-neighbour (both sides, 2 px), dilated by a
    (width - 1)^2 square.
    """
    if width < 1:
        raise ValueError(f"band width must be >= 1, got {width}")
    edge = np.zeros(label.shape, bool)
    dv = label[1:] != label[:-1]
    dh = label[:, 1:] != label[:, :-1]
    edge[:-1] |= dv
    edge[:, :-1] |= dh
    if width == 1:
        return edge
    edge[1:] |= dv
    edge[:, 1:] |= dh
    if width > 2:
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((width - 1, width - 1), np.uint8)).astype(bool)
    return edge


def compose_scene(rng: np.random.Generator, size: int, img: np.ndarray, n_under: int,
                  draw_classes: list, n_over: int, make_shape, make_texture, make_distractor
                  ) -> tuple[np.ndarray, np.ndarray, list[_Layer]]:
    """Place and paint the layers of one image over the float background ``img`` (S, S, 3).

    Bottom-up: ``n_under`` distractors (``make_distractor()`` -> Shape), one object per entry
    of ``draw_classes`` (``draw()`` -> class index, then ``make_shape(cls, centred)``), then
    ``n_over`` distractors on top. Placement is re-drawn (up to 30 times) so every object keeps
    ``MIN_VISIBLE`` of its area visible and ``MIN_INSIDE`` of it inside the image; an object
    that cannot be placed is dropped, except the first, which is then centred. Objects are
    painted with ``make_texture(cls, shape, x, y)``, distractors with a flat or mottled colour;
    antialiased coverage, a slight blur and noise follow. Returns (image (S, S, 3) uint8,
    owner (S, S) int16: index of the top layer at each pixel or -1, layers (cls -1 for a
    distractor)). All randomness comes from ``rng``, in a fixed order.
    """
    f = size / 128.0
    edge = max(1.0, 1.2 * f)                        # soft-edge width (px) of the coverage ramp
    pad = int(math.ceil(edge)) + 2
    yy, xx = _grid(size)
    owner = np.full((size, size), -1, np.int16)     # index of the top layer covering each pixel
    layers: list[_Layer] = []
    in_area: list[int] = []                         # per layer, in-image mask area at placement

    def try_place(make, is_object: bool, protect: bool, tries: int = 30) -> bool:
        for _ in range(tries):
            shape = make()
            win = shape.window(size, pad)
            if win is None:
                continue
            sd = shape.sdf(xx[win], yy[win])
            m = sd < 0
            area = int(m.sum())
            if area == 0 or (is_object and area < MIN_INSIDE * shape.area):
                continue
            if protect:
                covered = owner[win][m]
                lost = np.bincount(covered[covered >= 0], minlength=len(layers))
                ok = all(layers[j].cls < 0 or
                         (owner == j).sum() - lost[j] >= MIN_VISIBLE * in_area[j]
                         for j in np.nonzero(lost)[0])
                if not ok:
                    continue
            layers.append(_Layer(shape, -1, win, sd))
            in_area.append(area)
            owner[win][m] = len(layers) - 1
            return True
        return False

    for _ in range(n_under):
        try_place(make_distractor, False, False)
    for k, draw in enumerate(draw_classes):
        cls = draw()
        placed = try_place(lambda: make_shape(cls, False), True, True)
        if not placed and k == 0:                   # guarantee one object: centred, fully inside
            placed = try_place(lambda: make_shape(cls, True), True, True, tries=1000)
        if placed:
            layers[-1].cls = cls
    for _ in range(n_over):
        try_place(make_distractor, False, True)

    # Composite bottom-up with antialiased coverage alpha = clip(0.5 - sd / edge, 0, 1).
    for layer in layers:
        ys, xs = layer.win
        x, y = xx[layer.win], yy[layer.win]
        tex = (make_texture(layer.cls, layer.shape, x, y)
               if layer.cls >= 0 else _distractor_texture(layer.shape, x, y, rng))
        alpha = np.clip(0.5 - layer.sd / edge, 0.0, 1.0)
        img[ys, xs] = _mix(img[ys, xs], tex, alpha)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=0.5 * f)
    img += 0.01 * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, owner, layers


def render_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw image ``index`` of the set with ``seed``.

    Returns (image (S, S, 3) uint8, label (S, S) uint8 with 0 bg / k+1 class k / 255 void,
    objects: list of dicts name, bbox (xmin, ymin, xmax, ymax; 1-based inclusive, visible pixels),
    truncated, difficult, parts [(name, bbox)]).
    """
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size, size / 128.0)
    n_under = int(rng.integers(0, 3))
    n_obj = int(rng.integers(1, 4))
    n_over = int(rng.random() < 0.25)
    image, owner, layers = compose_scene(
        rng, size, img, n_under, [lambda: int(rng.integers(0, len(SYNTHETIC_CLASSES)))] * n_obj, n_over,
        lambda cls, centred: object_shape(SYNTHETIC_CLASSES[cls], rng, size, centred),
        lambda cls, shape, x, y: _class_texture(SYNTHETIC_CLASSES[cls], shape, x, y, rng, size / 128.0),
        lambda: _distractor_shape(rng, size))

    lut = np.zeros(len(layers) + 1, np.uint8)       # owner -1 -> lut[-1] = 0 (background)
    for j, layer in enumerate(layers):
        lut[j] = layer.cls + 1 if layer.cls >= 0 else 0
    label = lut[owner]
    label[void_band(label, band_width(size))] = 255

    objects = []
    for j, layer in enumerate(layers):
        if layer.cls < 0:
            continue
        vis = owner == j
        rows, cols = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
        bb = (int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1)
        x0, y0, x1, y1 = layer.shape.bbox()
        obj = {"name": SYNTHETIC_CLASSES[layer.cls], "bbox": bb,
               "truncated": int(x0 < 0 or y0 < 0 or x1 > size or y1 > size),
               "difficult": int(vis.sum() < 0.01 * size * size), "parts": []}
        if rng.random() < 0.3:                      # exercise part parsing: a 'head' box on top
            w, h = bb[2] - bb[0], bb[3] - bb[1]
            obj["parts"].append(("head", (bb[0] + w // 4, bb[1], bb[2] - w // 4, bb[1] + max(1, h // 3))))
        objects.append(obj)
    return image, label, objects


def voc_xml(image_id: str, size: int, objects: list[dict]) -> str:
    """VOC-style annotation XML (tab-indented, no declaration, as the VOC files)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "Synthetic ICAM shapes"
    ET.SubElement(src, "annotation").text = "tools/data/make_synthetic_voc.py"
    ET.SubElement(src, "image").text = "synthetic"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    ET.SubElement(root, "segmented").text = "1"

    def box(parent, bb):
        b = ET.SubElement(parent, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), bb):
            ET.SubElement(b, tag).text = str(val)

    for o in objects:
        ob = ET.SubElement(root, "object")
        ET.SubElement(ob, "name").text = o["name"]
        ET.SubElement(ob, "pose").text = "Unspecified"
        ET.SubElement(ob, "truncated").text = str(o["truncated"])
        ET.SubElement(ob, "difficult").text = str(o["difficult"])
        box(ob, o["bbox"])
        for pname, pbb in o["parts"]:
            part = ET.SubElement(ob, "part")
            ET.SubElement(part, "name").text = pname
            box(part, pbb)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def generate(out: str | Path, num_train: int, num_val: int, size: int, seed: int,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Write the dataset (see module docstring). Returns {'train': ids, 'val': ids, 'seconds': t}."""
    from tqdm import tqdm

    validate(out, num_train, num_val, size, seed, overwrite)
    out = Path(out)
    if overwrite:
        for name in OUTPUTS:
            if (out / name).exists():
                shutil.rmtree(out / name)
        for name in ("classes.txt", "cls_labels.npz"):   # cls_labels.npz would describe old images
            (out / name).unlink(missing_ok=True)
    for name in OUTPUTS[:4]:
        (out / name).mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    ids = [f"synth_{i:06d}" for i in range(num_train + num_val)]
    for i in tqdm(range(len(ids)), desc="synthetic VOC", unit="img", disable=not progress):
        image, label, objects = render_sample(seed, i, size)
        iid = ids[i]
        with atomic_path(out / "JPEGImages" / f"{iid}.jpg") as tmp:
            Image.fromarray(image).save(tmp, format="JPEG", quality=95)
        seg = out / "SegmentationClass" / f"{iid}.png"
        save_label_png(seg, label)
        with atomic_path(out / "SegmentationClassAug" / f"{iid}.png") as tmp:
            shutil.copyfile(seg, tmp)
        _write_text(out / "Annotations" / f"{iid}.xml", voc_xml(iid, size, objects))

    train, val = ids[:num_train], ids[num_train:]
    lists = out / "ImageSets" / "Segmentation"
    for name, lst in (("train", train), ("val", val), ("train_aug", train)):
        _write_text(lists / f"{name}.txt", "".join(f"{i}\n" for i in lst))
    _write_text(out / "classes.txt", "".join(f"{c}\n" for c in SYNTHETIC_CLASSES))
    return {"train": train, "val": val, "seconds": time.perf_counter() - t0}


def preview_grid(root: str | Path, ids: list[str], path: str | Path, cols: int = 4) -> None:
    """Save a PNG grid: for each id the image and its label map in VOC colours (void = white)."""
    from lib.io import load_label_png, voc_palette

    pal = voc_palette()
    tiles = []
    for iid in ids:
        img = np.asarray(Image.open(Path(root) / "JPEGImages" / f"{iid}.jpg").convert("RGB"))
        lab = pal[load_label_png(Path(root) / "SegmentationClass" / f"{iid}.png")]
        gap = np.full((img.shape[0], 2, 3), 255, np.uint8)
        tiles.append(np.concatenate([img, gap, lab, np.full((img.shape[0], 6, 3), 255, np.uint8)], 1))
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)]
    rows = [np.concatenate([r, np.full((6, r.shape[1], 3), 255, np.uint8)], 0) for r in rows]
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(rows, 0)).save(tmp, format="PNG")


def validate(out, num_train, num_val, size, seed, overwrite) -> None:
    """Reject bad arguments with a message (ValueError)."""
    if num_train < 1:
        raise UserError(f"--num_train must be >= 1, got {num_train}")
    if num_val < 0:
        raise UserError(f"--num_val must be >= 0, got {num_val}")
    if num_train + num_val > 1_000_000:
        raise UserError("at most 1,000,000 images (ids have 6 digits)")
    if size < MIN_SIZE:
        raise UserError(f"--size must be >= {MIN_SIZE} px, got {size}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    existing = [n for n in (*OUTPUTS, "classes.txt") if (out / n).exists()]
    if existing and not overwrite:
        raise UserError(f"--out {out} already holds {existing}; pass --overwrite to replace them")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="dataset root to write (VOC2012-like folder)")
    ap.add_argument("--num_train", type=int, required=True)
    ap.add_argument("--num_val", type=int, required=True)
    ap.add_argument("--size", type=int, default=128, help="image side in px (square images)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace the dataset folders in --out")
    ap.add_argument("--preview", default=None, help="also save a PNG grid of the first 8 images + labels")
    args = ap.parse_args(argv)
    res = generate(args.out, args.num_train, args.num_val, args.size, args.seed, args.overwrite)
    print(f"wrote {len(res['train'])} train + {len(res['val'])} val images of {args.size} px to "
          f"{args.out} in {res['seconds']:.1f} s", file=sys.stderr)
    if args.preview:
        preview_grid(args.out, (res["train"] + res["val"])[:8], args.preview)


if __name__ == "__main__":
    run_main(main, "make_synthetic_voc")
