"""Fixed-shape, jit-able ops: boxes, NMS, RoI pooling (anchors, kNN, k-means, 3D-face pose
fits and landmark alignment live beside them).

Public names are re-exported here; implementations live in the submodules.
"""

from jaxface.ops.boxes import DEFAULT_BBOX_XFORM_CLIP
from jaxface.ops.boxes import array_module
from jaxface.ops.boxes import box_area
from jaxface.ops.boxes import clip_boxes
from jaxface.ops.boxes import decode_boxes
from jaxface.ops.boxes import decode_landmarks
from jaxface.ops.boxes import encode_landmarks
from jaxface.ops.boxes import ioa_matrix
from jaxface.ops.boxes import encode_boxes
from jaxface.ops.boxes import intersection_wh
from jaxface.ops.boxes import iou
from jaxface.ops.boxes import iou_matrix
from jaxface.ops.boxes import matlab_int32_boxoverlap
from jaxface.ops.boxes import matlab_round
from jaxface.ops.boxes import xywh_to_xyxy
from jaxface.ops.boxes import xyxy_to_xywh
from jaxface.ops.nms import NMSOutput
from jaxface.ops.nms import batched_nms
from jaxface.ops.roi import roi_align
from jaxface.ops.roi import roi_pool
from jaxface.ops.anchors import anchor_shapes, feature_map_size, grid_anchors  # noqa: F401
from jaxface.ops.targets import (
    Assignment,
    assign_boxes,
    face_sizes,
    in_size_range,
    ohem_select,
    roi_targets,
    rpn_targets,
    sample_balanced,
)  # noqa: F401
from jaxface.ops.knn import cluster_knn_predict, pairwise_sq_distances  # noqa: F401
from jaxface.ops.kmeans import (
    KMeansResult,
    PerClassKMeansResult,
    clusters_for_sizes,
    kmeans,
    kmeans_per_class,
    kmeans_plusplus_init,
    lloyd,
)  # noqa: F401
from jaxface.ops.quintuplet import (
    BalancedQuintupletSampler,
    Quintuplets,
    balanced_batch_indices,
    header_mask,
    mine_quintuplets,
)  # noqa: F401
