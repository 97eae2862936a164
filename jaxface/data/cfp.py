"""CFP (Celebrities in Frontal-Profile) from its original layout, for training and evaluation.

The manual directory is the dataset as released (the CFP protocol)::

    <manual_dir>/
      Data/Images/NNN/{frontal,profile}/NN.jpg      500 identities x (10 frontal + 4 profile)
      Data/Fiducials/NNN/{frontal,profile}/NN.txt   30 hand-labelled points, "x,y" per line
      Protocol/Pair_list_{F,P}.txt                  numbering of the 5,000 / 2,000 images
      Protocol/Split/{FF,FP}/01..10/{same,diff}.txt 350 + 350 pairs per split

Each protocol split covers 50 identities, disjoint across splits. The builder
(``cfp_manual``) puts the identities of the protocol splits ``train_splits``
(01-08 by default) in the ``train`` split and every other identity (those of 09-10
by default) in ``test``, so a model trained on ``train`` is evaluated on the unseen
identities of the remaining protocol splits (`jaxface.tasks.recognition`'s ``cfp``
evaluator runs the FF / FP protocol of those splits).

Bad files: an image that is missing, truncated or undecodable, or a missing or
unreadable fiducial file, skips that image and is reported in ``skipped.json``
(`jaxface.data.tfds_base`); malformed lines are errors naming file and line.

Preprocessing (a choice, the release has none): CFP's images are loose face crops of
varying size (75 px to 1,663 px a side, median ~205); each is cut to its centred
square (side = the shorter side) and resized (PIL, antialiased bilinear) to
``image_size``. The fiducials are mapped into that crop.

Features per example:
  image: uint8 [S, S, 3] (PNG);
  label: int64, the identity's class index within its split (0 .. n_ids - 1, ordered
    by CFP identity number) -- the training target;
  identity: int64, CFP's 0-based identity (``Images/NNN`` minus one);
  is_profile: bool, the image's folder flag;
  index: int64, 0-based position in ``Pair_list_F.txt`` (frontal) or
    ``Pair_list_P.txt`` (profile): what the protocol's pair files refer to;
  landmarks: float32 [30, 2], the fiducials in crop pixels;
  yaw: float32 degrees, `jaxface.ops.pose.yaw_from_cfp_fiducials` of the original
    fiducials (profiles come out at ~37-55 degrees, below their true angle: see that
    function; the folder flag is the better pose signal on CFP);
  protocol_split: int64, the 1-based protocol split that holds the identity.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib

import numpy as np

from jaxface.data import protocol_files

__all__ = ["CFPIndex", "index_cfp", "identity_splits", "crop_image", "DEFAULT_TRAIN_SPLITS"]

DEFAULT_TRAIN_SPLITS = (1, 2, 3, 4, 5, 6, 7, 8)


def identity_splits(protocol: protocol_files.CFPProtocol) -> np.ndarray:
    """int64 [500]: the 1-based protocol split of each CFP identity (0 = in no split).

    Read off the FF and FP pair files; an identity claimed by two splits is an error.
    """
    n_ids = int(max(protocol.frontal_identity.max(), protocol.profile_identity.max())) + 1
    out = np.zeros(n_ids, np.int64)
    for name, second_id in (("FF", protocol.frontal_identity), ("FP", protocol.profile_identity)):
        for k, (i, j, _) in enumerate(protocol.splits[name], start=1):
            ids = np.unique(np.concatenate([protocol.frontal_identity[i], second_id[j]]))
            clash = ids[(out[ids] != 0) & (out[ids] != k)]
            if len(clash):
                raise ValueError(
                    f"{protocol.root}/Protocol/Split/{name}/{k:02d}: identity {int(clash[0]) + 1} "
                    f"also appears in split {int(out[clash[0]]):02d}; splits must be disjoint"
                )
            out[ids] = k
    return out


@dataclasses.dataclass(frozen=True)
class CFPIndex:
    """Every CFP image with its identity, flag, protocol number and protocol split."""

    protocol: protocol_files.CFPProtocol
    paths: list  # [7000] image paths: the 5,000 frontal, then the 2,000 profile
    identity: np.ndarray  # [7000] 0-based CFP identity
    is_profile: np.ndarray  # [7000] bool
    index: np.ndarray  # [7000] 0-based number in Pair_list_F / Pair_list_P
    split: np.ndarray  # [7000] 1-based protocol split of the identity

    def select(self, splits) -> np.ndarray:
        """Positions (into this index) of the images whose identity is in ``splits``."""
        return np.flatnonzero(np.isin(self.split, np.asarray(list(splits), np.int64)))


def index_cfp(root: str | os.PathLike, *, check_exists: bool = True) -> CFPIndex:
    """Parses CFP's protocol under ``root`` and lists every image (`CFPIndex`)."""
    proto = protocol_files.parse_cfp_protocol(root, check_exists=check_exists)
    per_id = identity_splits(proto)
    nf, npf = len(proto.frontal_paths), len(proto.profile_paths)
    identity = np.concatenate([proto.frontal_identity, proto.profile_identity]).astype(np.int64)
    return CFPIndex(
        protocol=proto,
        paths=list(proto.frontal_paths) + list(proto.profile_paths),
        identity=identity,
        is_profile=np.concatenate([np.zeros(nf, bool), np.ones(npf, bool)]),
        index=np.concatenate([np.arange(nf), np.arange(npf)]).astype(np.int64),
        split=per_id[identity],
    )


def crop_image(path, fiducials: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred square crop (side = shorter side) resized to ``size``; fiducials mapped along.

    Returns ``(image uint8 [size, size, 3], points float32 [30, 2])``.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        x0, y0 = (w - side) // 2, (h - side) // 2
        im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        image = np.asarray(im, np.uint8)
    scale = size / side
    pts = (np.asarray(fiducials, np.float64) - [x0, y0]) * scale
    return image, pts.astype(np.float32)


try:  # The builder needs tensorflow_datasets; the index above does not.
    import tensorflow_datasets as tfds
    from jaxface.data import tfds_base
except ImportError:  # pragma: no cover
    tfds = None

if tfds is not None:

    @dataclasses.dataclass(eq=False)
    class CfpManualConfig(tfds.core.BuilderConfig):
        """A ``cfp_manual`` variant.

        Attributes:
          image_size: side of the stored square crops.
          train_splits: protocol splits (1..10) whose identities form ``train``; the
            identities of every other split form ``test``.
        """

        image_size: int = 112
        train_splits: tuple = DEFAULT_TRAIN_SPLITS

        def __post_init__(self):
            bad = [s for s in self.train_splits if not 1 <= int(s) <= 10]
            if bad or not self.train_splits or len(set(self.train_splits)) == 10:
                raise ValueError(
                    f"CfpManualConfig(name={self.name!r}): train_splits={tuple(self.train_splits)} "
                    "must be 1..9 distinct protocol splits in 1..10 (some must be left for test)"
                )
            if not 16 <= int(self.image_size) <= 512:
                raise ValueError(
                    f"CfpManualConfig(name={self.name!r}): image_size={self.image_size}, expected 16..512"
                )

        def fingerprint(self) -> dict:
            return {
                "image_size": int(self.image_size),
                "train_splits": [int(s) for s in self.train_splits],
            }

    class CfpManual(tfds_base.Builder):
        """CFP read from its original layout in the manual directory; see the module docstring."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {
            "1.0.0": "CFP from the original layout; identity-disjoint train/test by protocol split."
        }
        BUILDER_CONFIGS = [
            CfpManualConfig(name="default", description="112 px crops; train = splits 01-08.")
        ]
        DEFAULT_CONFIG_NAME = "default"
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Place the CFP release (http://www.cfpw.io/) in the manual directory: Data/Images, "
            "Data/Fiducials and Protocol/ as distributed."
        )

        def _info(self):
            s = int(self.builder_config.image_size)
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(
                            shape=(s, s, 3), dtype=np.uint8, encoding_format="png"
                        ),
                        "label": tfds.features.Scalar(dtype=np.int64),
                        "identity": tfds.features.Scalar(dtype=np.int64),
                        "is_profile": tfds.features.Scalar(dtype=np.bool_),
                        "index": tfds.features.Scalar(dtype=np.int64),
                        "landmarks": tfds.features.Tensor(shape=(30, 2), dtype=np.float32),
                        "yaw": tfds.features.Scalar(dtype=np.float32),
                        "protocol_split": tfds.features.Scalar(dtype=np.int64),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="http://www.cfpw.io/",
                metadata=tfds.core.MetadataDict(config=self.builder_config.fingerprint()),
            )

        def _split_generators(self, dl_manager):
            root = pathlib.Path(os.fspath(dl_manager.manual_dir))
            # Paths are checked (they must stay inside root) but a missing image is not an
            # error here: it is skipped and reported when its example is generated.
            idx = index_cfp(root, check_exists=False)
            train_splits = sorted({int(s) for s in self.builder_config.train_splits})
            test_splits = sorted(set(range(1, 11)) - set(train_splits))
            return {
                "train": self._generate_examples(idx, idx.select(train_splits), "train"),
                "test": self._generate_examples(idx, idx.select(test_splits), "test"),
            }

        def _generate_examples(self, idx: CFPIndex, rows: np.ndarray, split: str = "train"):
            """A missing, truncated or undecodable image, or a missing or unreadable
            fiducial file, skips that image and is reported
            (`tfds_base.Builder.read_or_skip`, ``skipped.json``); a malformed fiducial
            *line* is an error naming file and line. Labels are numbered over the
            split's identities as listed by the protocol, so a skipped image never
            renumbers the others."""
            from PIL import Image  # pylint: disable=import-outside-toplevel

            from jaxface.ops import pose  # pylint: disable=import-outside-toplevel

            size = int(self.builder_config.image_size)
            ids = np.unique(idx.identity[rows])
            label_of = {int(i): n for n, i in enumerate(ids)}

            def key_of(r):
                return f"{'P' if idx.is_profile[r] else 'F'}{int(idx.index[r]):04d}"

            fids = {}
            for r in rows:
                fpath = idx.protocol.fiducial_path(idx.paths[r])
                fid = self.read_or_skip(
                    split, key_of(r), fpath, lambda: protocol_files.read_cfp_fiducials(fpath)
                )
                if fid is not None:
                    fids[int(r)] = fid
            if not fids:
                return
            order = sorted(fids)
            yaws = np.asarray(
                pose.yaw_from_cfp_fiducials(np.stack([fids[r] for r in order]).astype(np.float32)),
                np.float32,
            )
            yaw_of = dict(zip(order, yaws.tolist()))

            def make(r):
                image, pts = crop_image(idx.paths[r], fids[r], size)
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="png", compress_level=1)
                return {
                    "image": buf.getvalue(),
                    "label": label_of[int(idx.identity[r])],
                    "identity": int(idx.identity[r]),
                    "is_profile": bool(idx.is_profile[r]),
                    "index": int(idx.index[r]),
                    "landmarks": pts,
                    "yaw": float(yaw_of[r]),
                    "protocol_split": int(idx.split[r]),
                }

            for r in order:
                key = key_of(r)
                ex = self.read_or_skip(split, key, idx.paths[r], lambda: make(r))
                if ex is not None:
                    yield key, ex

    __all__ += ["CfpManual", "CfpManualConfig"]
