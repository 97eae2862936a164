"""tfds builder ``cfp_scenes``: real CFP faces pasted onto real face-free photographs.

Detection data with real faces in real photographs: each
scene is a random crop / rescale of one of scikit-image's bundled photographs that show
no person (:data:`BACKGROUNDS`), with several CFP faces pasted on it. The faces of the
``train`` split come from the identities of CFP's protocol splits 01-08, those of
``test`` from splits 09-10 (`jaxface.data.cfp.identity_splits`), so the test scenes hold
only identities the detector never saw.

Read from the manual directory (the CFP release, `jaxface.data.cfp`); nothing is
downloaded (scikit-image's photographs are in its wheel; the builder refuses any that
would need its ``pooch`` download).

How a scene is made (:func:`scene_example`; a pure function of ``(config, split,
index)``, so every byte is fixed by the seed):

1. Background: one of :data:`BACKGROUNDS` (uniform), grey ones made RGB, flipped left-right
   with p = 0.5, a random crop of ``H x W`` (each uniform in ``min_side..max_side``) after
   rescaling the photograph by a factor drawn log-uniformly so that the crop covers
   between 30 % and 100 % of the photograph's shorter side.
2. Faces: ``n`` uniform in ``1..max_faces`` CFP images drawn uniformly from the split's
   7,000 / 14 images per identity (so ~2 / 7 are profiles); each face's height (its GT
   box height) log-uniform in ``[min_face, min(max_face, 0.9 x scene shorter side)]``;
   placed larger first, at a uniform position where its whole GT box lies inside the
   scene and its patch (box + margin) overlaps no earlier patch (20 tries, else the
   face is dropped), so no face is occluded by another.
3. Each face's GT box is `jaxface.data.cfp_landmarks.face_box` clipped to its CFP image
   (CFP's crops are often tight, and the box's forehead allowance can reach past the
   top). The face is cut as that box grown by ``margin`` x its longer side on every
   side, resized (PIL, antialiased) so that the box has the drawn height, and
   alpha-blended: the part cut from the image (the grown box may reach past the CFP
   crop, whose outside stays transparent) is feathered at its border (smoothstep over
   ``min(0.6 x margin, 0.15 x face height)``).

4. Tilt (``max_rotation`` > 0): each face patch is rotated by an angle uniform in
   ``+-max_rotation`` degrees about its centre (PIL, bilinear); its landmarks follow the
   same map, and its GT box becomes the axis-aligned box of the ellipse inscribed in
   the upright box, rotated (a face's outline is close to that ellipse, so the box
   stays tight at any tilt).
5. Hard negatives (``max_distractors`` > 0): after every face, ``0..max_distractors``
   hands, arms, skin blobs and badges (`jaxface.data.scene_distractors`), heights drawn
   as the faces', pasted where they overlap no face patch; they carry no label.
6. Colour (``tint`` > 0): a greyscale background photograph is tinted with
   probability ``tint`` (`scene_distractors.tint`).

Builder configs: ``default`` (256-320 px scenes, steps 1-3 only) and ``photo`` (384-1,024
px scenes, faces 10-300 px, tilt up to 30 degrees, up to 4 hard negatives, tint 0.7;
1,600 train scenes), the data of `configs/scaleface.py:cfp_scenes`.

Labels per face: ``bbox`` = the face box mapped into the scene (tfds ``BBoxFeature``:
normalised ymin, xmin, ymax, xmax); ``landmarks`` = `cfp_landmarks.five_points` mapped
the same way (pixels; for profiles the hidden eye and mouth corner are estimates, see
that module); ``blur`` 0; ``occlusion`` 0 (patches never overlap); ``pose`` 1 for
CFP profiles (WIDER's "atypical pose"), else 0; ``invalid`` 0 (every face is >= 10 px);
and, beyond the detection layout, ``identity`` (CFP's 0-based identity) and
``is_profile``. The layout is that of ``synthetic_faces/detection``, so
`jaxface.tasks.detection_data.faces_of` and the ``wider`` evaluator read it unchanged.

The face size range is ``min_face`` to ``min(max_face, 0.9 x the scene's shorter side)``:
a face cannot be taller than its scene (~230-290 px for ``default``'s 256-320 px scenes).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pathlib

import numpy as np
from PIL import Image

from jaxface.data import cfp as cfp_data
from jaxface.data import cfp_landmarks
from jaxface.data import scene_distractors
from jaxface.data import scene_paste

__all__ = [
    "BACKGROUNDS",
    "ScenesSpec",
    "FacePool",
    "face_pool",
    "load_background",
    "scene_example",
]

# scikit-image's bundled photographs that show no person (checked by eye). Left out:
# astronaut and camera (people), horse and logo (drawings), microaneurysms (102 px).
# ``chelsea`` is a cat's face: a hard negative, not a human face.
BACKGROUNDS = (
    "brick",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "cell",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "motorcycle_left",
    "motorcycle_right",
)

_SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}


@functools.lru_cache(maxsize=None)
def load_background(name: str) -> np.ndarray:
    """uint8 [H, W, 3] of one of :data:`BACKGROUNDS`, read from scikit-image's own files."""
    import skimage  # pylint: disable=import-outside-toplevel

    if name not in BACKGROUNDS:
        raise ValueError(f"unknown background {name!r}; known: {BACKGROUNDS}")
    data_dir = pathlib.Path(skimage.__file__).parent / "data"
    fname = {
        "clock": "clock_motion.png",
        "immunohistochemistry": "ihc.png",
        "hubble_deep_field": "hubble_deep_field.jpg",
        "retina": "retina.jpg",
        "rocket": "rocket.jpg",
    }.get(name, f"{name}.png")
    path = data_dir / fname
    if not path.is_file():  # never fall back to skimage's pooch download
        raise FileNotFoundError(f"{path}: scikit-image's bundled photograph {name!r} is missing")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


@dataclasses.dataclass(frozen=True)
class ScenesSpec:
    """The scene generator's parameters (see the module docstring)."""

    seed: int = 0
    min_side: int = 256
    max_side: int = 320
    max_faces: int = 6
    min_face: float = 10.0
    max_face: float = 400.0
    margin: float = 0.25
    max_rotation: float = 0.0
    max_distractors: int = 0
    tint: float = 0.0


@dataclasses.dataclass(frozen=True)
class FacePool:
    """The CFP images one split draws its faces from."""

    paths: tuple  # image paths
    fiducials: np.ndarray  # [N, 30, 2]
    is_profile: np.ndarray  # [N] bool
    identity: np.ndarray  # [N] 0-based CFP identity

    def __len__(self):
        return len(self.paths)


def face_pool(root, splits) -> FacePool:
    """The CFP images (all of them, frontal and profile) of the identities in ``splits``."""
    from jaxface.data import protocol_files  # pylint: disable=import-outside-toplevel

    idx = cfp_data.index_cfp(root)
    rows = idx.select(splits)
    if not len(rows):
        raise ValueError(f"{root}: no CFP identity in protocol splits {tuple(splits)}")
    fid = np.stack(
        [protocol_files.read_cfp_fiducials(idx.protocol.fiducial_path(idx.paths[r])) for r in rows]
    )
    return FacePool(
        paths=tuple(str(idx.paths[r]) for r in rows),
        fiducials=fid,
        is_profile=idx.is_profile[rows].copy(),
        identity=idx.identity[rows].copy(),
    )


@functools.lru_cache(maxsize=None)
def _is_grey(name: str) -> bool:
    return scene_distractors.is_greyscale(load_background(name))


def _background(
    rng: np.random.Generator, h: int, w: int, tint: float = 0.0
) -> tuple[np.ndarray, int]:
    k = int(rng.integers(len(BACKGROUNDS)))
    photo = load_background(BACKGROUNDS[k])
    ph, pw = photo.shape[:2]
    # The crop covers 30..100 % of the photo's shorter side (before the output resize).
    frac = float(np.exp(rng.uniform(np.log(0.3), 0.0)))
    side = frac * min(ph, pw)
    scale = side / max(h, w)  # photo pixels per scene pixel
    cw, ch = min(pw, w * scale), min(ph, h * scale)
    x0 = float(rng.uniform(0, pw - cw))
    y0 = float(rng.uniform(0, ph - ch))
    im = Image.fromarray(photo).resize(
        (w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0
    )
    out = np.asarray(im, np.uint8)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if tint > 0 and _is_grey(BACKGROUNDS[k]) and rng.random() < tint:
        out = scene_distractors.tint(rng, out)
    return np.ascontiguousarray(out), k


def _cut_face(
    path: str, fid: np.ndarray, is_profile: bool, height: float, margin: float, max_width: float
):
    """The face patch of one CFP image resized so its GT box is ``height`` px tall (less
    if the box would then be wider than ``max_width``).

    Returns ``(rgb uint8 [ph, pw, 3], alpha float32 [ph, pw], map, box)`` where ``map(pts)``
    takes CFP image pixels to patch pixels (exactly the resize that made the patch) and
    ``box`` is the GT box in CFP image pixels: `cfp_landmarks.face_box` clipped to the
    image (CFP's crops are often tight: the forehead allowance may reach past the top).
    """
    with Image.open(path) as im:
        iw, ih = im.size
    box = cfp_landmarks.face_box(fid, is_profile).astype(np.float64)
    box = np.clip(box, 0.0, [iw, ih, iw, ih])
    bw, bh = box[2] - box[0], box[3] - box[1]
    height = min(float(height), max_width * bh / bw)
    m = margin * max(bw, bh)
    gx0, gy0, gx1, gy1 = box[0] - m, box[1] - m, box[2] + m, box[3] + m  # grown box
    s = height / bh  # patch px per source px
    pw, ph = max(1, int(round((gx1 - gx0) * s))), max(1, int(round((gy1 - gy0) * s)))
    sx, sy = pw / (gx1 - gx0), ph / (gy1 - gy0)  # the exact scale of the patch grid
    with Image.open(path) as im:
        im = im.convert("RGB")
        # The part of the grown box inside the image, in patch pixels (integer grid).
        cx0, cy0 = max(gx0, 0.0), max(gy0, 0.0)
        cx1, cy1 = min(gx1, float(iw)), min(gy1, float(ih))
        dx0, dy0 = int(round((cx0 - gx0) * sx)), int(round((cy0 - gy0) * sy))
        dx1, dy1 = int(round((cx1 - gx0) * sx)), int(round((cy1 - gy0) * sy))
        dx1, dy1 = min(max(dx1, dx0 + 1), pw), min(max(dy1, dy0 + 1), ph)
        dx0, dy0 = min(dx0, dx1 - 1), min(dy0, dy1 - 1)
        # Source box that maps exactly onto [dx0, dx1) x [dy0, dy1).
        # (clipped to the image: rounding may push it out by a fraction of a pixel).
        src = (
            max(gx0 + dx0 / sx, 0.0),
            max(gy0 + dy0 / sy, 0.0),
            min(gx0 + dx1 / sx, float(iw)),
            min(gy0 + dy1 / sy, float(ih)),
        )
        part = im.resize((dx1 - dx0, dy1 - dy0), Image.BILINEAR, box=src, reducing_gap=2.0)
    rgb = np.zeros((ph, pw, 3), np.uint8)
    rgb[dy0:dy1, dx0:dx1] = np.asarray(part, np.uint8)
    # Feathered over the part cut from the image (the grown box may reach past it).
    alpha = np.zeros((ph, pw), np.float32)
    feather = max(1.0, min(0.6 * m * s, 0.15 * height))
    alpha[dy0:dy1, dx0:dx1] = scene_paste.feather(dy1 - dy0, dx1 - dx0, feather)

    def to_patch(pts):
        pts = np.asarray(pts, np.float64)
        return np.stack([(pts[..., 0] - gx0) * sx, (pts[..., 1] - gy0) * sy], -1)

    return rgb, alpha, to_patch, box


def scene_example(spec: ScenesSpec, split: str, index: int, pool: FacePool) -> dict:
    """One scene as NumPy: ``image`` uint8 [H, W, 3], ``image/id``, ``background`` and
    ``faces`` {``boxes`` [n, 4] x1 y1 x2 y2 pixels, ``landmarks`` [n, 5, 2], ``blur``,
    ``occlusion``, ``pose``, ``invalid``, ``identity``, ``is_profile``}; a pure function
    of its arguments."""
    rng = np.random.default_rng([int(spec.seed), _SPLIT_CODE.get(split, 3), int(index)])
    h = int(rng.integers(spec.min_side, spec.max_side + 1))
    w = int(rng.integers(spec.min_side, spec.max_side + 1))
    canvas, bg = _background(rng, h, w, spec.tint)
    canvas = canvas.astype(np.float32)
    n = int(rng.integers(1, spec.max_faces + 1))
    hi = min(float(spec.max_face), 0.9 * min(h, w))
    lo = min(float(spec.min_face), hi)
    heights = np.sort(np.exp(rng.uniform(np.log(lo), np.log(hi), size=n)))[::-1]
    picks = rng.integers(len(pool), size=n)
    patches = []  # placed patch rectangles x0 y0 x1 y1
    faces = {k: [] for k in ("boxes", "landmarks", "identity", "is_profile")}
    for height, p in zip(heights, picks):
        fid, prof = pool.fiducials[p], bool(pool.is_profile[p])
        rgb, alpha, to_patch, box = _cut_face(
            pool.paths[p], fid, prof, height, spec.margin, max_width=0.95 * w
        )
        pbox = to_patch(box.reshape(2, 2)).reshape(4)  # GT box in patch pixels
        lmk = to_patch(cfp_landmarks.five_points(fid, prof))
        if spec.max_rotation > 0:
            angle = float(rng.uniform(-spec.max_rotation, spec.max_rotation))
            rgb, alpha, to_new, rot = scene_paste.rotate(rgb, alpha, angle)
            pbox, lmk = scene_paste.rotated_box(pbox, to_new, rot), to_new(lmk)
        ph, pw = alpha.shape
        # Integer patch offset such that the GT box lies inside the scene.
        inside = (
            int(np.ceil(-pbox[0])),
            int(np.floor(w - pbox[2])),
            int(np.ceil(-pbox[1])),
            int(np.floor(h - pbox[3])),
        )
        placed = scene_paste.free_spot(rng, (ph, pw), inside, patches)
        if placed is None:
            continue
        ox, oy = placed
        patches.append((ox, oy, ox + pw, oy + ph))
        scene_paste.paste(canvas, rgb, alpha, ox, oy)
        off = np.array([ox, oy], np.float64)
        faces["boxes"].append((pbox.reshape(2, 2) + off).reshape(4))
        faces["landmarks"].append(lmk + off)
        faces["identity"].append(int(pool.identity[p]))
        faces["is_profile"].append(prof)
    if spec.max_distractors > 0:
        for _ in range(int(rng.integers(0, spec.max_distractors + 1))):
            height = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            rgb, alpha, _ = scene_distractors.distractor(rng, height)
            ph, pw = alpha.shape
            spot = scene_paste.free_spot(
                rng, (ph, pw), (-pw // 4, w - 3 * pw // 4, -ph // 4, h - 3 * ph // 4), patches
            )
            if spot is not None:
                patches.append((spot[0], spot[1], spot[0] + pw, spot[1] + ph))
                scene_paste.paste(canvas, rgb, alpha, *spot)
    k = len(faces["boxes"])
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return {
        "image": image,
        "image/id": int(index),
        "background": bg,
        "faces": {
            "boxes": np.asarray(faces["boxes"], np.float32).reshape(k, 4),
            "landmarks": np.asarray(faces["landmarks"], np.float32).reshape(k, 5, 2),
            "blur": np.zeros((k,), np.int32),
            "occlusion": np.zeros((k,), np.int32),
            "pose": np.asarray(faces["is_profile"], np.int32).reshape(k),
            "invalid": np.zeros((k,), np.int32),
            "identity": np.asarray(faces["identity"], np.int64).reshape(k),
            "is_profile": np.asarray(faces["is_profile"], bool).reshape(k),
        },
    }


def to_features(ex: dict) -> dict:
    """A :func:`scene_example` -> the tfds feature dict (PNG bytes, normalised boxes)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    h, w = ex["image"].shape[:2]
    f = ex["faces"]
    bbox = [
        tfds.features.BBox(
            ymin=float(np.clip(b[1] / h, 0, 1)),
            xmin=float(np.clip(b[0] / w, 0, 1)),
            ymax=float(np.clip(b[3] / h, 0, 1)),
            xmax=float(np.clip(b[2] / w, 0, 1)),
        )
        for b in f["boxes"]
    ]
    buf = io.BytesIO()
    Image.fromarray(ex["image"]).save(buf, format="png", compress_level=1)
    return {
        "image": buf.getvalue(),
        "image/id": ex["image/id"],
        "background": ex["background"],
        "faces": {"bbox": bbox, **{k: v for k, v in f.items() if k != "boxes"}},
    }


try:  # The builder needs tensorflow_datasets; the generator above does not.
    import tensorflow_datasets as tfds
    from jaxface.data import tfds_base
except ImportError:  # pragma: no cover
    tfds = None

if tfds is not None:

    @dataclasses.dataclass(eq=False)
    class CfpScenesConfig(tfds.core.BuilderConfig):
        """A ``cfp_scenes`` variant (fields: module docstring and `ScenesSpec`).

        Attributes:
          num_train, num_test: scenes per split.
          train_splits: CFP protocol splits whose identities feed ``train``; every
            other split's identities feed ``test``.
        """

        seed: int = 0
        num_train: int = 3000
        num_test: int = 300
        min_side: int = 256
        max_side: int = 320
        max_faces: int = 6
        min_face: float = 10.0
        max_face: float = 400.0
        margin: float = 0.25
        max_rotation: float = 0.0
        max_distractors: int = 0
        tint: float = 0.0
        train_splits: tuple = cfp_data.DEFAULT_TRAIN_SPLITS

        def __post_init__(self):
            where = f"CfpScenesConfig(name={self.name!r})"
            bad = [s for s in self.train_splits if not 1 <= int(s) <= 10]
            if bad or not self.train_splits or len(set(self.train_splits)) == 10:
                raise ValueError(f"{where}: train_splits must be 1..9 distinct splits in 1..10")
            if not 64 <= self.min_side <= self.max_side:
                raise ValueError(f"{where}: need 64 <= min_side <= max_side")
            if not 1 <= self.min_face <= self.max_face or self.max_faces < 1:
                raise ValueError(f"{where}: need 1 <= min_face <= max_face and max_faces >= 1")
            if self.num_train < 0 or self.num_test < 0:
                raise ValueError(f"{where}: num_train / num_test must be >= 0")
            if not 0 <= self.max_rotation <= 90 or self.max_distractors < 0:
                raise ValueError(f"{where}: need 0 <= max_rotation <= 90, max_distractors >= 0")
            if not 0 <= self.tint <= 1:
                raise ValueError(f"{where}: tint is a probability, got {self.tint}")

        def spec(self) -> ScenesSpec:
            return ScenesSpec(
                seed=int(self.seed),
                min_side=int(self.min_side),
                max_side=int(self.max_side),
                max_faces=int(self.max_faces),
                min_face=float(self.min_face),
                max_face=float(self.max_face),
                margin=float(self.margin),
                max_rotation=float(self.max_rotation),
                max_distractors=int(self.max_distractors),
                tint=float(self.tint),
            )

        def fingerprint(self) -> dict:
            base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
            out = {}
            for f in dataclasses.fields(self):
                if f.name not in base:
                    v = getattr(self, f.name)
                    out[f.name] = [int(s) for s in v] if f.name == "train_splits" else v
            return out

    class CfpScenes(tfds_base.Builder):
        """Real CFP faces on real face-free photographs; see the module docstring."""

        VERSION = tfds.core.Version("1.1.0")
        RELEASE_NOTES = {
            "1.0.0": "First release.",
            "1.1.0": "The `photo` config: photo-sized scenes, tilted faces, hard negatives.",
        }
        BUILDER_CONFIGS = [
            CfpScenesConfig(
                name="default",
                description="256-320 px scenes, 1-6 CFP faces of 10-288 px; train ids 01-08.",
            ),
            CfpScenesConfig(
                name="photo",
                description=(
                    "384-1024 px scenes, 1-6 CFP faces of 10-300 px tilted by up to 30 degrees, "
                    "0-4 hands, arms, skin blobs and badges, grey photographs tinted (p = 0.7)."
                ),
                num_train=1600,
                min_side=384,
                max_side=1024,
                max_face=300.0,
                max_rotation=30.0,
                max_distractors=4,
                tint=0.7,
            ),
        ]
        DEFAULT_CONFIG_NAME = "default"
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Place the CFP release (http://www.cfpw.io/) in the manual directory: Data/Images, "
            "Data/Fiducials and Protocol/ as distributed."
        )

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=tfds_base.scene_features(
                    face_fields={
                        "identity": tfds.features.Scalar(dtype=np.int64),
                        "is_profile": tfds.features.Scalar(dtype=np.bool_),
                    },
                    image_fields={"background": tfds.features.Scalar(dtype=np.int64)},
                ),
                homepage="http://www.cfpw.io/",
                metadata=tfds.core.MetadataDict(
                    config=self.builder_config.fingerprint(), backgrounds=list(BACKGROUNDS)
                ),
            )

        def _split_generators(self, dl_manager):
            root = pathlib.Path(os.fspath(dl_manager.manual_dir))
            cfg = self.builder_config
            train_splits = sorted({int(s) for s in cfg.train_splits})
            test_splits = sorted(set(range(1, 11)) - set(train_splits))
            out = {}
            if cfg.num_train:
                out["train"] = self._generate_examples(
                    "train", cfg.num_train, face_pool(root, train_splits)
                )
            if cfg.num_test:
                out["test"] = self._generate_examples(
                    "test", cfg.num_test, face_pool(root, test_splits)
                )
            return out

        def _generate_examples(self, split, num, pool):
            spec = self.builder_config.spec()
            for i in range(num):
                yield i, to_features(scene_example(spec, split, i, pool))

    __all__ += ["CfpScenes", "CfpScenesConfig"]
