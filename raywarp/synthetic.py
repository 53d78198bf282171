"""Real photographs with exact ground-truth motion: training pairs, masks, test videos.

This module owns the synthetic data used to train and evaluate the flow densifier
and to make test/demo videos with known motion:

* `make_pair` / `make_batch`: two frames built from layers of real photographs
  (a background plus 1-3 cut-out foreground layers), with the exact forward flow
  0->1 and an occlusion mask. Two kinds of scene: flat layers each moving with its
  own affine motion, or slanted planes at different depths (sometimes a floor
  meeting the background in a crease) seen by a moving camera, each moving by a
  homography with parallax.
* `iid_mask`, `hole_mask`, `random_mask`: where flow is "known" for densification.
* `stereo_pair`: the real Middlebury Motorcycle pair with ground-truth flow,
  reserved for evaluation (never used by the generator).
* `affine_video`, `translate_video`: a photograph moving with a known affine
  motion, with exact flows between consecutive frames.

Model: every layer lives in its own "layer coordinates". A layer has a texture
map `tex` (layer coords -> photo pixel coords), an optional shape (a star-shaped
region given by a radius per angle, evaluated analytically so coverage is exact
at any sub-pixel point) and one pose per frame `poses[t]` (frame-t pixel coords
-> layer coords), affine or projective. Frame t is rendered by inverse-mapping every
pixel through its pose, so frame pixels are bilinear samples of the photo at exactly
known points (up to OpenCV's 1/32-pixel coordinate quantization), and the motion of
a layer from frame t0 to t1 is the 3x3 map `inv(poses[t1]) @ poses[t0]`. A layer on
a plane also knows its inverse depth per frame (affine in the pixel), and each
pixel shows the nearest layer covering it; layers without geometry stack in list
order.
All randomness comes from a numpy Generator, so outputs are deterministic by seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import skimage.data
import torch

# "cat" is the same image as "chelsea" and "horse" a flat binary silhouette: both left out.
# "stereo_motorcycle" is reserved for evaluation (stereo_pair) and must never appear here.
TRAIN_PHOTOS = (
    "astronaut", "chelsea", "immunohistochemistry", "hubble_deep_field", "colorwheel",
    "retina", "camera", "brick", "grass", "gravel", "page",
)
HELDOUT_PHOTOS = ("coffee", "rocket")

_ALLOWED = frozenset(TRAIN_PHOTOS + HELDOUT_PHOTOS + ("cat", "horse"))


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """Return skimage photograph `name` as a read-only float32 (H, W, 3) array in [0, 1].

    Grayscale photos are replicated to 3 channels. Cached: each loads once.
    """
    if name not in _ALLOWED:
        raise ValueError(f"name: unknown or reserved photo {name!r}; choose from {sorted(_ALLOWED)}")
    img = np.asarray(getattr(skimage.data, name)())
    img = img.astype(np.float32) / (1.0 if img.dtype == bool else 255.0)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    img.setflags(write=False)  # shared by the cache: nobody may modify it
    return img


# ---------------------------------------------------------------------------------------
# 3x3 homogeneous maps (pixel coords, x = column, y = row): affines and homographies


def _affine(center, shift=(0.0, 0.0), angle_deg=0.0, scale=1.0) -> np.ndarray:
    """Rotate by `angle_deg` and scale about `center`, then translate by `shift` (3x3)."""
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    cx, cy = center
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = np.array([cx, cy]) + np.asarray(shift, float) - m[:2, :2] @ np.array([cx, cy])
    return m


def _apply(m: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Map coordinate arrays (x, y) through the 3x3 homography `m` (for an affine w = 1 exactly)."""
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w


def _is_affine(m: np.ndarray) -> bool:
    return bool(m[2, 0] == 0 and m[2, 1] == 0 and m[2, 2] == 1)


def affine_motion(size, shift=(0.0, 0.0), angle_deg=0.0, zoom=1.0) -> np.ndarray:
    """2x3 affine moving a frame of `size` (H, W) by rotation/zoom about its center, then `shift`.

    Maps pixel p of frame t to its position in frame t+1; use as `affine_video`'s `motion`.
    """
    h, w = size
    return _affine(((w - 1) / 2, (h - 1) / 2), shift, angle_deg, zoom)[:2]


# ---------------------------------------------------------------------------------------
# Layers: shapes, rendering, flow and occlusion (shared by make_pair and affine_video)

_ANGLES = np.linspace(-np.pi, np.pi, 256, endpoint=False)


@dataclass
class _Layer:
    photo: np.ndarray  # (h, w, 3) texture
    tex: np.ndarray  # 3x3: layer coords -> photo pixel coords
    poses: list  # per frame, 3x3: frame pixel coords -> layer coords
    shape: tuple | None = None  # (cx, cy, radius per _ANGLES) in layer coords; None = everywhere
    # Per frame, 3-vector m: the layer's inverse depth at frame pixel (x, y) is m·(x, y, 1)
    # (a plane's is affine in the pixel). None: no geometry, later layers are in front.
    depth: list | None = None
    # 3-vector l: the texture is scaled by l·(x, y, 1) at layer coords (x, y) (illumination
    # fixed to the surface, so brightness constancy holds). None: as photographed.
    light: np.ndarray | None = None


def _covers(layer: _Layer, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bool array: does `layer` cover layer-coordinate points (x, y)? Exact at any point."""
    if layer.shape is None:
        return np.ones(x.shape, bool)
    cx, cy, radii = layer.shape
    dx, dy = x - cx, y - cy
    limit = np.interp(np.arctan2(dy, dx), _ANGLES, radii, period=2 * np.pi)
    return dx * dx + dy * dy < limit * limit


def _random_shape(rng: np.random.Generator, size) -> tuple:
    """A random ellipse, star-shaped polygon or smooth blob inside a frame of `size`."""
    h, w = size
    r = rng.uniform(0.12, 0.35) * min(h, w)
    cx, cy = rng.uniform(0.15, 0.85) * (w - 1), rng.uniform(0.15, 0.85) * (h - 1)
    kind = rng.integers(3)
    if kind == 0:  # ellipse: polar equation of a rotated ellipse with semi-axes (a, b)
        a, b = r, r * rng.uniform(0.4, 1.0)
        t = _ANGLES - rng.uniform(0, np.pi)
        radii = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    elif kind == 1:  # polygon: vertices at jittered angles (gaps < pi keep it star-shaped)
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi) + 2 * np.pi * (np.arange(n) + rng.uniform(-0.2, 0.2, n)) / n)
        v = r * rng.uniform(0.5, 1.0, n)[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
        # Each table angle's ray hits the edge between the two vertices around it.
        i = np.searchsorted(ang - ang[0], (_ANGLES - ang[0]) % (2 * np.pi), side="right") - 1
        vi, e = v[i], v[(i + 1) % n] - v[i]
        d = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1)
        radii = (vi[:, 0] * e[:, 1] - vi[:, 1] * e[:, 0]) / (d[:, 0] * e[:, 1] - d[:, 1] * e[:, 0])
    else:  # smooth blob: a few low Fourier harmonics of the radius
        k = np.arange(2, 6)
        amp = rng.dirichlet(np.ones(4)) * rng.uniform(0.1, 0.5)
        radii = r * (1 + (amp[:, None] * np.cos(k[:, None] * _ANGLES + rng.uniform(0, 2 * np.pi, 4)[:, None])).sum(0))
    return cx, cy, radii


def _random_texture_map(rng: np.random.Generator, photo: np.ndarray, center, size, max_angle: float) -> np.ndarray:
    """3x3 layer -> photo map: a random crop of `photo` around `center`, slightly scaled/rotated."""
    ph, pw = photo.shape[:2]
    # Photo pixels per frame pixel; capped so the crop fits inside the photo (reflection
    # beyond the border is rarely needed). Below 1 the texture is upsampled (softer).
    scale = min(np.exp(rng.uniform(np.log(0.6), np.log(1.6))), 0.9 * min(ph, pw) / max(size))
    half_w, half_h = 0.6 * scale * size[1], 0.6 * scale * size[0]
    px = rng.uniform(half_w, pw - half_w) if pw > 2 * half_w else pw / 2
    py = rng.uniform(half_h, ph - half_h) if ph > 2 * half_h else ph / 2
    m = _affine(center, angle_deg=rng.uniform(-max_angle, max_angle), scale=scale)
    m[:2, 2] += np.array([px, py]) - np.asarray(center)  # send `center` to (px, py)
    return m


def _grid(size):
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return x, y


def _inverse_depth(layer: _Layer, index: int, t: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inverse depth of `layer` (number `index` in its scene) at frame-t pixels (x, y).

    Layers without geometry are ordered by index, so they composite back to front.
    """
    if layer.depth is None:
        return np.full(np.shape(x), float(index))
    m = layer.depth[t]
    return m[0] * x + m[1] * y + m[2]


def _render(layers, t: int, size):
    """Composite frame `t`: each pixel shows the covering layer nearest the camera.

    Returns image (H, W, 3) and top layer index (H, W).
    """
    h, w = size
    x, y = _grid(size)
    img = np.zeros((h, w, 3), np.float32)
    top = np.zeros((h, w), np.int64)
    nearest = np.full((h, w), -np.inf)
    for k, layer in enumerate(layers):
        pose = layer.poses[t]
        warp = layer.tex @ pose
        flags, border = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, cv2.BORDER_REFLECT_101
        if _is_affine(warp):
            tex = cv2.warpAffine(layer.photo, warp[:2], (w, h), flags=flags, borderMode=border)
        else:
            tex = cv2.warpPerspective(layer.photo, warp, (w, h), flags=flags, borderMode=border)
        lx, ly = _apply(pose, x, y)
        if layer.light is not None:
            tex *= np.clip(layer.light[0] * lx + layer.light[1] * ly + layer.light[2], 0, None)[..., None]
        depth = _inverse_depth(layer, k, t, x, y)
        front = _covers(layer, lx, ly) & (depth > nearest)
        img[front] = np.minimum(tex[front], 1)
        top[front] = k
        nearest[front] = depth[front]
    return img, top


def _flow_and_visibility(layers, top: np.ndarray, t0: int, t1: int):
    """Exact forward flow t0 -> t1 (2, H, W) and visibility (H, W) for frame t0's pixels.

    A pixel on layer k moves with k's motion; it is visible if its target is inside
    frame t1 and no other layer covering the target there is nearer the camera.
    """
    h, w = top.shape
    x, y = _grid((h, w))
    flow = np.zeros((2, h, w), np.float64)
    visible = np.zeros((h, w), bool)
    for k, layer in enumerate(layers):
        on = top == k
        if not on.any():
            continue
        motion = np.linalg.inv(layer.poses[t1]) @ layer.poses[t0]
        qx, qy = _apply(motion, x[on], y[on])
        flow[0][on], flow[1][on] = qx - x[on], qy - y[on]
        vis = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
        depth = _inverse_depth(layer, k, t1, qx, qy)
        for j, other in enumerate(layers):
            if j != k:
                nearer = _inverse_depth(other, j, t1, qx, qy) > depth
                vis &= ~(nearer & _covers(other, *_apply(other.poses[t1], qx, qy)))
        visible[on] = vis
    return flow.astype(np.float32), visible


def _to_torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# ---------------------------------------------------------------------------------------
# Training pairs

# Scene kinds `make_pair` draws from (uniformly).
MOTIONS = ("affine", "perspective")


def _random_motion(rng: np.random.Generator, center, size) -> np.ndarray:
    """Random affine about `center`: shift <= 10% of size, rotation <= 10 deg, scale 0.9-1.1."""
    h, w = size
    shift = rng.uniform(-0.1, 0.1, 2) * np.array([w, h])
    return _affine(center, shift, rng.uniform(-10, 10), rng.uniform(0.9, 1.1))


def _affine_scene(rng: np.random.Generator, size, background: str, others: list, layers) -> list:
    """Flat layers, back to front: a crop of `background` and `layers[0]`..`layers[1]` cut-outs
    of `others` (random ellipses / polygons / blobs), each with its own random affine motion."""
    h, w = size
    center = ((w - 1) / 2, (h - 1) / 2)
    bg_photo = load_photo(background)
    scene = [_Layer(bg_photo, _random_texture_map(rng, bg_photo, center, size, 10), [])]
    for _ in range(rng.integers(layers[0], layers[1] + 1)):
        photo = load_photo(others[rng.integers(len(others))])
        shape = _random_shape(rng, size)
        scene.append(_Layer(photo, _random_texture_map(rng, photo, shape[:2], size, 30), [], shape))
    for layer in scene:
        pivot = center if layer.shape is None else layer.shape[:2]
        # Layer coords = frame-0 coords; frame 1 sees the layer through the inverse motion.
        layer.poses = [np.eye(3), np.linalg.inv(_random_motion(rng, pivot, size))]
    return scene


# Perspective scenes: textured planes seen by a moving pinhole camera. Camera coordinates
# X = (right, down, forward), pixel p ~ K X. A plane is the 3-vector n with n·X = 1 on it:
# its inverse depth at pixel p is n·K⁻¹p, affine in p, so which of two planes is nearer
# changes along a straight line (creases, objects standing in a floor come out exact). A
# rigid motion X -> R X + t (of the camera, of an object, or both) moves the plane's pixels
# by the homography H = K (R + t nᵀ) K⁻¹, since t = t nᵀX on the plane: parallax, the
# displacement of a camera translation, is proportional to inverse depth.


def _plane_homography(k: np.ndarray, rotation: np.ndarray, translation: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """3x3 map of the plane's frame-0 pixels to frame-1 pixels under X -> R X + t."""
    return k @ (rotation + np.outer(translation, plane)) @ np.linalg.inv(k)


def _moved_plane(rotation: np.ndarray, translation: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """The plane n after X -> R X + t: n' = R n / (1 + (R n)·t), since then n'·(R X + t) = n·X."""
    turned = rotation @ plane
    return turned / (1 + turned @ translation)


def _plane_layer(photo: np.ndarray, tex: np.ndarray, k: np.ndarray, plane: np.ndarray, rotation: np.ndarray,
                 translation: np.ndarray, shape: tuple | None = None) -> _Layer:
    """A layer on `plane` (layer coords = frame-0 pixels) moved by X -> R X + t from frame 0 to 1."""
    kinv = np.linalg.inv(k)
    motion = _plane_homography(k, rotation, translation, plane)
    depth = [kinv.T @ plane, kinv.T @ _moved_plane(rotation, translation, plane)]
    return _Layer(photo, tex, [np.eye(3), np.linalg.inv(motion)], shape, depth)


def _random_light(rng: np.random.Generator, center, size) -> np.ndarray:
    """Illumination of a surface: brightness 0.15-1.2 (log-uniform) at `center`, falling
    off or rising by up to 60 % across the frame in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0, 0.6) / max(size) * np.array([np.cos(angle), np.sin(angle)])
    gain = np.exp(rng.uniform(np.log(0.15), np.log(1.2)))
    return gain * np.array([slope[0], slope[1], 1 - slope @ np.asarray(center, float)])


def _rotation(rng: np.random.Generator, max_deg) -> np.ndarray:
    """Random 3x3 rotation, angles about the x, y, z axes up to `max_deg` (3 values)."""
    return cv2.Rodrigues(np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg, float)))[0]


def _random_plane(rng: np.random.Generator, point: np.ndarray, inv_depth: float, max_tilt_deg: float,
                  corners: np.ndarray) -> np.ndarray:
    """A plane with inverse depth `inv_depth` at `point` (normalised image coords (u, v, 1)),
    tilted up to `max_tilt_deg` from facing the camera in a random direction; flattened
    where needed so its inverse depth stays >= 0.3 x `inv_depth` at the frame's `corners` (3, 4)."""
    angle = rng.uniform(0, 2 * np.pi)
    slope = np.tan(np.deg2rad(rng.uniform(0, max_tilt_deg))) * np.array([np.cos(angle), np.sin(angle)])
    lowest = (slope @ (corners[:2] - point[:2, None])).min()  # relative change of inverse depth
    if lowest < -0.7:
        slope *= 0.7 / -lowest
    return inv_depth * np.array([slope[0], slope[1], 1 - slope @ point[:2]])


def _crease_plane(rng: np.random.Generator, plane: np.ndarray, corners: np.ndarray):
    """A floor or side wall: a plane meeting `plane` along a random line through the frame and
    nearer beyond it, its inverse depth rising to 1.5-4x `plane`'s at the farthest corner.

    Returns the plane and a point on its visible side (normalised coords (u, v, 1)).
    """
    lo, hi = corners[:2].min(1), corners[:2].max(1)
    anchor = lo + rng.uniform(0.2, 0.8, 2) * (hi - lo)
    angle = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    line = np.array([normal[0], normal[1], -normal @ anchor])  # > 0 on the crease plane's side
    gain = line @ corners / (plane @ corners)  # growth of the inverse-depth ratio per unit of strength
    strength = (rng.uniform(1.5, 4.0) - 1) / gain.max()
    far = corners[:, gain.argmax()]
    return plane + strength * line, (far + np.array([anchor[0], anchor[1], 1.0])) / 2


def _plane_texture_map(rng: np.random.Generator, photo: np.ndarray, kinv: np.ndarray, plane: np.ndarray,
                       center, size, max_angle: float) -> np.ndarray:
    """3x3 frame-0 pixel -> photo map of `photo` lying on `plane`: foreshortened by the
    perspective (denser where the plane is farther), unit area scale at pixel `center`,
    then a random crop as `_random_texture_map`."""
    normal = plane / np.linalg.norm(plane)
    e1 = np.cross(normal, (0.0, 1.0, 0.0))
    e1 /= np.linalg.norm(e1)
    on_plane = np.stack([e1, np.cross(normal, e1), plane]) @ kinv  # pixel -> plane coords (homogeneous)
    u, v, w = on_plane @ (center[0], center[1], 1.0)
    jacobian = (on_plane[:2, :2] - np.outer((u / w, v / w), on_plane[2, :2])) / w
    s = 1 / np.sqrt(abs(np.linalg.det(jacobian)))
    unit = np.array([[s, 0.0, center[0] - s * u / w], [0.0, s, center[1] - s * v / w], [0.0, 0.0, 1.0]])
    return _random_texture_map(rng, photo, center, size, max_angle) @ unit @ on_plane


def _perspective_scene(rng: np.random.Generator, size, background: str, others: list, layers) -> list:
    """Textured planes seen by a camera that rotates and translates between the frames.

    A background plane tilted up to 60°, half the time with a crease plane (a floor or side
    wall) meeting it; in front, `layers[0]`..`layers[1]` cut-outs (as in `_affine_scene`) on
    planes tilted up to 50° at 1.1-3x the inverse depth behind their centre. Camera: focal
    length 0.7-1.5 x the frame, rotation <= 2° pitch/yaw and 3° roll, translation sideways
    by what moves the nearest layer 2-12 % of the frame, and along the view by up to as
    much; half the cut-outs also move rigidly on their own. Every layer moves by its
    homography, and each pixel shows the nearest surface.
    """
    h, w = size
    f = rng.uniform(0.7, 1.5) * max(h, w)  # field of view about 37-71°
    k = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    kinv = np.linalg.inv(k)
    corners = kinv @ np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1.0, 1.0, 1.0, 1.0]])
    center = ((w - 1) / 2, (h - 1) / 2)

    bg_plane = _random_plane(rng, kinv @ (*center, 1.0), 1.0, 60, corners)
    planes, shapes, centers, photos = [bg_plane], [None], [center], [load_photo(background)]
    if rng.random() < 0.5:
        crease, point = _crease_plane(rng, bg_plane, corners)
        planes.append(crease)
        shapes.append(None)
        centers.append(tuple((k @ point)[:2]))
        photos.append(load_photo(others[rng.integers(len(others))]))
    for _ in range(rng.integers(layers[0], layers[1] + 1)):
        shape = _random_shape(rng, size)
        point = kinv @ (shape[0], shape[1], 1.0)
        behind = max(plane @ point for plane in planes)
        planes.append(_random_plane(rng, point, behind * np.exp(rng.uniform(np.log(1.1), np.log(3))), 50, corners))
        shapes.append(shape)
        centers.append(shape[:2])
        photos.append(load_photo(others[rng.integers(len(others))]))
    texture_maps = [_plane_texture_map(rng, photo, kinv, plane, c, size, 10 if shape is None else 30)
                    for photo, plane, c, shape in zip(photos, planes, centers, shapes)]

    # Translation scaled so the nearest layer moves by `reach` pixels sideways.
    nearest = max((plane @ corners).max() if shape is None else plane @ kinv @ (*c, 1.0)
                  for plane, c, shape in zip(planes, centers, shapes))
    reach = rng.uniform(0.02, 0.12) * max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    cam_t = reach / (f * nearest) * np.array([np.cos(angle), np.sin(angle), rng.uniform(-1, 1)])
    cam_r = _rotation(rng, (2, 2, 3))

    scene = []
    for photo, tex, plane, c, shape in zip(photos, texture_maps, planes, centers, shapes):
        rot, trans = cam_r, cam_t
        if shape is not None and rng.random() < 0.5:  # the object moves too, about its centre
            point = kinv @ (*c, 1.0)
            anchor = point / (plane @ point)  # 3D centre
            own_r = _rotation(rng, (5, 5, 10))
            angle = rng.uniform(0, 2 * np.pi)
            own_t = rng.uniform(0, 0.08) * max(h, w) / (f * (plane @ point)) * np.array(
                [np.cos(angle), np.sin(angle), rng.uniform(-1, 1)])
            rot, trans = cam_r @ own_r, cam_r @ (anchor - own_r @ anchor + own_t) + cam_t
        layer = _plane_layer(photo, tex, k, plane, rot, trans, shape)
        layer.light = _random_light(rng, c, size)
        scene.append(layer)
    return scene


def _pair(scene: list, size) -> dict:
    """Frames 0 and 1 of `scene` with exact flow 0->1 and visibility, as `make_pair` returns them."""
    frame0, top = _render(scene, 0, size)
    frame1, _ = _render(scene, 1, size)
    flow, visible = _flow_and_visibility(scene, top, 0, 1)
    return {
        "frame0": _to_torch(frame0.transpose(2, 0, 1)),
        "frame1": _to_torch(frame1.transpose(2, 0, 1)),
        "flow": _to_torch(flow),
        "occlusion": _to_torch(visible[None]),
    }


def make_pair(rng: np.random.Generator, size=(128, 128), photos=TRAIN_PHOTOS, layers=(1, 3),
              motions=MOTIONS) -> dict:
    """A random two-frame scene of layered photographs with exact motion.

    A background (random crop of a random photo) and `layers[0]`..`layers[1]`
    foreground cut-outs (crops of other photos in random ellipses / polygons /
    blobs), as one kind of scene drawn from `motions`:
    - "affine": flat layers, each with its own random affine motion, composited in
      list order;
    - "perspective": every layer a slanted textured plane at its own depth (and
      sometimes a floor meeting the background in a crease), the camera moving
      between the frames, some objects moving too: each layer moves by a homography,
      with parallax, and the nearest surface is seen at each pixel.
    Returns torch float32 tensors: frame0, frame1 (3, H, W) in [0, 1]; flow
    (2, H, W) exact forward flow 0->1 (x, y pixels, of the top layer at each
    pixel); occlusion (1, H, W), 1 where the frame-0 pixel is visible in frame 1
    and lands inside it, 0 otherwise.
    """
    if "stereo_motorcycle" in photos:
        raise ValueError("photos: stereo_motorcycle is reserved for evaluation")
    if not motions or not set(motions) <= set(MOTIONS):
        raise ValueError(f"motions: need some of {MOTIONS}, got {tuple(motions)}")
    kind = motions[rng.integers(len(motions))]  # with one kind, draws nothing: seeds stay comparable
    names = list(photos)
    bg_name = names[rng.integers(len(names))]
    others = [n for n in names if n != bg_name] or names  # foregrounds use other photos if any
    build = _affine_scene if kind == "affine" else _perspective_scene
    return _pair(build(rng, size, bg_name, others, layers), size)


def make_batch(seed: int, batch: int, size=(128, 128), photos=TRAIN_PHOTOS, layers=(1, 3), motions=MOTIONS) -> dict:
    """`batch` pairs from `make_pair`, deterministic by `seed`, stacked to (B, C, H, W) tensors."""
    rng = np.random.default_rng(seed)
    pairs = [make_pair(rng, size, photos, layers, motions) for _ in range(batch)]
    # numpy stack: a torch parallel op here stalls badly when the cores are busy.
    return {key: torch.from_numpy(np.stack([p[key].numpy() for p in pairs])) for key in pairs[0]}


# ---------------------------------------------------------------------------------------
# Known-flow masks for densification: float32 (H, W), 1 = flow known


def iid_mask(rng: np.random.Generator, size, density: float) -> np.ndarray:
    """Each pixel known independently with probability `density` (e.g. 0.01-0.10)."""
    return (rng.random(size) < density).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size, cells: int) -> np.ndarray:
    """Smooth random field: coarse `cells`-wide noise upsampled bicubically to `size`."""
    h, w = size
    coarse = rng.standard_normal((max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w)))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _add_top(holes: np.ndarray, score: np.ndarray, count: int) -> None:
    """Turn the `count` not-yet-hole pixels with the highest `score` into holes (in place)."""
    free = np.flatnonzero(~holes)
    count = min(count, free.size)
    if count > 0:
        holes.flat[free[np.argpartition(-score.flat[free], count - 1)[:count]]] = True


def hole_mask(rng: np.random.Generator, size, coverage: float | None = None) -> np.ndarray:
    """Structured unknown regions: 1 = known, 0 = hole; holes cover `coverage` (default 10-40%).

    Holes are a random mixture of blobs (thresholded smooth noise), occlusion-like
    bands with wavy edges along a random direction, and inpainting-style masks
    (thick brush strokes and rectangles). Blob and band pieces take an exact number
    of new pixels and brush pieces that would overshoot are dropped, so the hole
    fraction equals the target to the pixel.
    """
    h, w = size
    n = h * w
    target = rng.uniform(0.1, 0.4) if coverage is None else coverage
    holes = np.zeros(size, bool)
    kinds = rng.choice(3, size=rng.integers(1, 4), replace=False)
    x, y = _grid(size)
    for step in range(12):
        remaining = int(round(target * n)) - int(holes.sum())
        if remaining <= 0:
            break
        budget = int(remaining * rng.uniform(0.3, 1.0))
        kind = kinds[rng.integers(len(kinds))]
        if kind == 0:  # blob: highest values of a smooth random field
            _add_top(holes, _smooth_noise(rng, size, int(rng.integers(3, 8))), budget)
        elif kind == 1:  # band: a slab of a random direction, edges made wavy by smooth noise
            a = rng.uniform(0, np.pi)
            s = x * np.cos(a) + y * np.sin(a) + 0.05 * max(h, w) * _smooth_noise(rng, size, 6)
            start = rng.uniform(s.min(), s.max())
            _add_top(holes, -np.abs(s - start), budget)  # pixels nearest the band's center line
        else:  # inpainting: a thick random brush stroke or a rectangle
            piece = np.zeros(size, np.uint8)
            if rng.random() < 0.5:
                pts = np.cumsum(rng.uniform(-0.3, 0.3, (int(rng.integers(2, 6)), 2)) * (w, h), 0)
                pts = (pts + rng.uniform(0, 1, 2) * (w, h)).astype(np.int32)
                thick = max(1, int(rng.uniform(0.03, 0.1) * min(h, w)))
                cv2.polylines(piece, [pts], False, 1, thick)
            else:
                rh, rw = (rng.uniform(0.1, 0.5, 2) * (h, w)).astype(int)
                y0, x0 = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
                piece[y0:y0 + rh, x0:x0 + rw] = 1
            merged = holes | piece.astype(bool)
            if merged.sum() <= target * n:  # never overshoot the target
                holes = merged
    # Whatever budget is left (e.g. brush strokes that did not fit) becomes one exact blob.
    _add_top(holes, _smooth_noise(rng, size, int(rng.integers(3, 8))), int(round(target * n)) - int(holes.sum()))
    return (~holes).astype(np.float32)


def random_mask(rng: np.random.Generator, size) -> np.ndarray:
    """Training mixture: half i.i.d. at density in [0.01, 0.10], half `hole_mask` holes.

    Callers may multiply by the occlusion mask (flow is not observable where occluded).
    """
    if rng.random() < 0.5:
        return iid_mask(rng, size, rng.uniform(0.01, 0.10))
    return hole_mask(rng, size)


# ---------------------------------------------------------------------------------------
# Real evaluation pair


def stereo_pair(scale: int = 2) -> dict:
    """Middlebury 2014 Motorcycle (skimage) as a flow pair with ground truth.

    Left -> right flow is (-disparity, 0): left pixel (x, y) is at (x - d, y) in the
    right image. With integer `scale` > 1 images are area-downscaled, flow divided
    by `scale`, and a pixel is valid only if its whole block was. Returns torch
    float32 tensors with batch 1: frame0 (left), frame1 (right) (1, 3, H, W),
    flow (1, 2, H, W), valid (1, 1, H, W) (finite disparity, target inside frame;
    invalid flow set to 0).
    """
    left, right, disp = skimage.data.stereo_motorcycle()
    left, right = (im.astype(np.float32) / 255.0 for im in (left, right))
    disp = disp.astype(np.float32)
    ok = np.isfinite(disp)
    disp = np.where(ok, disp, 0.0).astype(np.float32)
    if scale > 1:
        h, w = (disp.shape[0] // scale) * scale, (disp.shape[1] // scale) * scale
        size = (w // scale, h // scale)
        left, right = (cv2.resize(im[:h, :w], size, interpolation=cv2.INTER_AREA) for im in (left, right))
        # Block means map block centres to block centres, so flow scales by 1/scale.
        disp = disp[:h, :w].reshape(h // scale, scale, w // scale, scale).mean((1, 3)) / scale
        ok = ok[:h, :w].reshape(h // scale, scale, w // scale, scale).all((1, 3))
    x = np.arange(disp.shape[1])[None, :]
    valid = ok & (x - disp >= 0) & (x - disp <= disp.shape[1] - 1)
    flow = np.stack([np.where(valid, -disp, 0.0), np.zeros_like(disp)])
    return {
        "frame0": _to_torch(left.transpose(2, 0, 1))[None],
        "frame1": _to_torch(right.transpose(2, 0, 1))[None],
        "flow": _to_torch(flow)[None],
        "valid": _to_torch(valid[None])[None],
    }


# ---------------------------------------------------------------------------------------
# Test videos with known motion


def affine_video(photo: str, frames: int, size, motion, origin=None, zoom: float = 1.0):
    """`frames` frames of `photo` moving by the affine `motion` (2x3 or 3x3) each frame.

    `motion` maps pixel p of frame t to its position in frame t+1 (see
    `affine_motion`). Frame 0 is the crop of the photo whose top-left corner is
    `origin` (x, y; default: centred) at `zoom` photo pixels per frame pixel;
    outside the photo the texture is mirrored. Returns (video (T, 3, H, W),
    flows (T-1, 2, H, W)) torch float32, flows[t] the exact forward flow t -> t+1.
    """
    h, w = size
    img = load_photo(photo)
    m = np.eye(3)
    m[:2] = np.asarray(motion, np.float64).reshape(-1, 3)[:2]
    if origin is None:
        origin = ((img.shape[1] - zoom * (w - 1)) / 2, (img.shape[0] - zoom * (h - 1)) / 2)
    tex = np.array([[zoom, 0.0, origin[0]], [0.0, zoom, origin[1]], [0.0, 0.0, 1.0]])
    poses, pose = [], np.eye(3)
    for _ in range(frames):
        poses.append(pose)
        pose = pose @ np.linalg.inv(m)  # frame t+1 -> frame t -> ... -> frame 0 = layer coords
    scene = [_Layer(img, tex, poses)]
    video = np.stack([_render(scene, t, size)[0].transpose(2, 0, 1) for t in range(frames)])
    top = np.zeros(size, np.int64)
    flows = np.stack([_flow_and_visibility(scene, top, t, t + 1)[0] for t in range(frames - 1)]) if frames > 1 \
        else np.zeros((0, 2, h, w), np.float32)
    return _to_torch(video), _to_torch(flows)



def affine_backward_flow(motion, size) -> torch.Tensor:
    """(1,2,H,W) exact flow t+1 → t for a scene moving by the affine `motion` every frame
    (the inverse of `affine_video`'s forward flows, away from the mirrored border)."""
    h, w = size
    m = np.eye(3)
    m[:2] = np.asarray(motion, np.float64)[:2]
    inv = np.linalg.inv(m)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    qx, qy = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2], inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
    return torch.from_numpy(np.stack([qx - x, qy - y])[None].astype(np.float32))

def translate_video(photo: str, frames: int, size, velocity, origin=None):
    """`affine_video` with content moving by `velocity` (vx, vy) pixels per frame."""
    return affine_video(photo, frames, size, affine_motion(size, shift=velocity), origin)


def layered_video(frames: int, size, background: str = "coffee", foreground: str = "rocket",
                  bg_motion=None, fg_motion=None, radius: float = 0.3):
    """A disc cut from `foreground` moving with `fg_motion` over `background` moving with
    `bg_motion` (2x3/3x3 affines per frame, as from `affine_motion`; default: a slow pan
    and a faster diagonal drift). Occlusions and disocclusions at the disc's edge.

    Returns (video (T,3,H,W), forward flows (T-1,2,H,W) t -> t+1, backward flows
    (T-1,2,H,W) t+1 -> t), all exact.
    """
    h, w = size
    center = ((w - 1) / 2, (h - 1) / 2)
    bg_motion = affine_motion(size, shift=(1.0, 0.0)) if bg_motion is None else bg_motion
    fg_motion = affine_motion(size, shift=(-2.0, 1.0)) if fg_motion is None else fg_motion
    photos = [load_photo(background), load_photo(foreground)]
    shape = (center[0], center[1], np.full(_ANGLES.shape, radius * min(h, w)))
    scene = []
    for photo, motion, layer_shape in zip(photos, (bg_motion, fg_motion), (None, shape)):
        m = np.eye(3)
        m[:2] = np.asarray(motion, np.float64).reshape(-1, 3)[:2]
        tex = np.array([[1.0, 0, (photo.shape[1] - w) / 2], [0, 1.0, (photo.shape[0] - h) / 2], [0, 0, 1.0]])
        poses, pose = [], np.eye(3)
        for _ in range(frames):
            poses.append(pose)
            pose = pose @ np.linalg.inv(m)
        scene.append(_Layer(photo, tex, poses, layer_shape))
    rendered = [_render(scene, t, size) for t in range(frames)]
    fwd = [_flow_and_visibility(scene, rendered[t][1], t, t + 1)[0] for t in range(frames - 1)]
    bwd = [_flow_and_visibility(scene, rendered[t + 1][1], t + 1, t)[0] for t in range(frames - 1)]
    video = np.stack([img.transpose(2, 0, 1) for img, _ in rendered])
    empty = np.zeros((0, 2, h, w), np.float32)
    return _to_torch(video), _to_torch(np.stack(fwd) if fwd else empty), _to_torch(np.stack(bwd) if bwd else empty)
