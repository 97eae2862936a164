"""tfds builder ``wider_face_original``: WIDER FACE from its original layout in a manual dir.

(tfds ships its own ``wider_face`` builder, which downloads archives and drops the
per-face labels; this one reads the files a user already has and keeps them.)

Manual directory layout (the official downloads, unpacked)::

    WIDER_train/images/<event>/<image>.jpg
    WIDER_val/images/<event>/<image>.jpg
    WIDER_test/images/<event>/<image>.jpg                (optional)
    wider_face_split/wider_face_{train,val}_bbx_gt.txt   (or wider_face_{train,val}.mat)
    wider_face_split/wider_face_test_filelist.txt        (optional)

Annotations are parsed by `jaxface.data.widerface` (text first, the ``.mat`` when the
text file is absent); every path is checked to stay inside the manual directory.

Bad files: an image that is missing, truncated or undecodable (each is fully decoded
while building) is skipped and reported in ``skipped.json`` (`jaxface.data.tfds_base`);
malformed annotation lines are errors naming file and line. Box handling (outside the
image, zero or negative size, images without faces): see `example_of`.

Features: ``image`` (the original JPEG bytes, not re-encoded), ``image/filename``
(``<event>/<image>.jpg``), ``faces`` a ``Sequence`` of ``bbox`` (``BBoxFeature``,
normalised and clipped to the image), ``bbox_xywh`` int32 [4] (the annotation exactly
as stored, pixels, for the official evaluation), and the six per-face labels
``blur``, ``expression``, ``illumination``, ``occlusion``, ``pose``, ``invalid``.
Splits: ``train``, ``validation`` and, when its file list is present, ``test``
(no faces).

Use::

  builder = jaxface.data.sources.get_builder("wider_face_original",
                                             manual_dir="/data/widerface")
  src = builder.as_data_source("validation")
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from jaxface.data import tfds_base, widerface

_LABELS = ("blur", "expression", "illumination", "occlusion", "pose", "invalid")
_SPLITS = {"train": "train", "validation": "val"}


def annotations(root, split: str) -> widerface.WiderFaceAnnotations:
    """The annotations of a tfds split (``train`` / ``validation``) from the manual dir:
    the text file if present, else the ``.mat``."""
    name = _SPLITS[split]
    txt = os.path.join(os.fspath(root), "wider_face_split", f"wider_face_{name}_bbx_gt.txt")
    return widerface.read_split(root, name, fmt="txt" if os.path.isfile(txt) else "mat")


def test_file_list(root) -> list:
    """``wider_face_split/wider_face_test_filelist.txt`` as checked relative paths, or []."""
    path = os.path.join(os.fspath(root), "wider_face_split", "wider_face_test_filelist.txt")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            line = line.strip()
            if line:
                out.append(widerface.check_relative_path(line, where=f"{path}:{k}"))
    return out


def example_of(root, split: str, ann: widerface.WiderFaceAnnotations, i: int) -> dict:
    """The feature dict of image ``i``.

    Boxes: ``bbox_xywh`` keeps the annotation exactly (never dropped, so face counts
    match the official files); ``bbox`` is normalised and clipped to the image, so a
    box partly outside is cut at the border, one entirely outside and a zero- or
    negative-size box become zero-area boxes (``ymax == ymin`` or ``xmax == xmin``),
    which the detection task masks out (see docs/reliability.md). An image without
    faces has an empty ``faces`` sequence.

    Raises:
      FileNotFoundError: the image is missing (naming it); `tfds_base.UnreadableFileError`:
        it is truncated or undecodable. The builder skips and reports both.
    """
    rec = ann.image(i)
    name = _SPLITS[split]
    path = widerface.image_file(root, name, ann, i)
    if not path.is_file():
        raise FileNotFoundError(f"{ann.source}: image {rec['path']!r} listed but {path} is missing")
    w, h = tfds_base.check_image(path)  # decodes fully: a truncated JPEG raises here
    xywh = np.asarray(rec["boxes"], np.int64).reshape(-1, 4)
    x1 = np.clip(xywh[:, 0] / w, 0, 1)
    y1 = np.clip(xywh[:, 1] / h, 0, 1)
    x2 = np.clip((xywh[:, 0] + np.maximum(xywh[:, 2], 0)) / w, 0, 1)
    y2 = np.clip((xywh[:, 1] + np.maximum(xywh[:, 3], 0)) / h, 0, 1)
    n = xywh.shape[0]
    faces = {
        "bbox": [
            tfds.features.BBox(ymin=float(a), xmin=float(b), ymax=float(c), xmax=float(d))
            for a, b, c, d in zip(y1, x1, np.maximum(y2, y1), np.maximum(x2, x1))
        ],
        "bbox_xywh": xywh.astype(np.int32),
    }
    for k in _LABELS:
        v = rec.get(k)
        faces[k] = np.zeros((n,), np.int32) if v is None else np.asarray(v, np.int32).reshape(n)
    return {"image": os.fspath(path), "image/filename": rec["path"], "faces": faces}


class WiderFaceOriginal(tfds_base.Builder):
    """WIDER FACE (Yang et al. CVPR 2016) from the original layout; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: original layout, all per-face labels."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unpack WIDER_train.zip, WIDER_val.zip (and WIDER_test.zip) and wider_face_split.zip "
        "from http://shuoyang1213.me/WIDERFACE/ into one folder and pass it as manual_dir "
        "(config.data.manual_dir)."
    )
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="default", description="All splits, all labels.")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        face = {
            "bbox": tfds.features.BBoxFeature(),
            "bbox_xywh": tfds.features.Tensor(shape=(4,), dtype=np.int32),
        }
        face.update({k: tfds.features.Scalar(dtype=np.int32) for k in _LABELS})
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, 3), dtype=np.uint8, encoding_format="jpeg"
                    ),
                    "image/filename": tfds.features.Text(),
                    "faces": tfds.features.Sequence(face),
                }
            ),
            homepage="http://shuoyang1213.me/WIDERFACE/",
            citation="Yang, Luo, Loy, Tang. WIDER FACE: A Face Detection Benchmark. CVPR 2016.",
        )

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        splits = {
            s: self._generate_examples(root, s)
            for s in ("train", "validation")
            if self._has_split(root, s)
        }
        if not splits:
            raise FileNotFoundError(
                f"wider_face_original: no annotation file under {root}/wider_face_split "
                "(wider_face_{train,val}_bbx_gt.txt or .mat)"
            )
        if test_file_list(root):
            splits["test"] = self._generate_test(root)
        return splits

    @staticmethod
    def _has_split(root, split):
        name = _SPLITS[split]
        base = os.path.join(os.fspath(root), "wider_face_split", f"wider_face_{name}")
        return os.path.isfile(base + "_bbx_gt.txt") or os.path.isfile(base + ".mat")

    def _generate_examples(self, root, split):
        """A missing, truncated or undecodable image is skipped and reported
        (`tfds_base.Builder.read_or_skip`, ``skipped.json``); the build goes on."""
        ann = annotations(root, split)
        for i in range(ann.num_images):
            where = f"WIDER_{_SPLITS[split]}/images/{ann.image_paths[i]}"
            ex = self.read_or_skip(
                split, ann.image_paths[i], where, lambda: example_of(root, split, ann, i)
            )
            if ex is not None:
                yield ann.image_paths[i], ex

    def _generate_test(self, root):
        empty = {"bbox": [], "bbox_xywh": np.zeros((0, 4), np.int32)}
        empty.update({k: np.zeros((0,), np.int32) for k in _LABELS})
        for rel in test_file_list(root):
            path = widerface.resolve_in_root(
                root, f"WIDER_test/images/{rel}", where="wider_face_test_filelist.txt"
            )

            def make():
                if not path.is_file():
                    raise FileNotFoundError(
                        f"wider_face_test_filelist.txt lists {rel!r} but {path} is missing"
                    )
                tfds_base.check_image(path)
                return {"image": os.fspath(path), "image/filename": rel, "faces": empty}

            ex = self.read_or_skip("test", rel, f"WIDER_test/images/{rel}", make)
            if ex is not None:
                yield rel, ex
