"""Is this pair the same photo? Keypoints (OpenCV's ORB) matched between the two and checked
for one geometric transform (an affine map, found by RANSAC): a resized, re-encoded, cropped
or squashed copy keeps hundreds of matches on one map, and so does the same leaf shot again a
little moved; two different leaves on the same board keep a handful. Perceptual hashes and
ImageNet features find the candidate pairs; this decides."""

from __future__ import annotations

import functools

import numpy as np

# Keypoints per photo; matches pass Lowe's ratio test; RANSAC's reprojection error in pixels
# of the decoded square (256 px by default).
FEATURES = 500
RATIO = 0.8
REPROJECTION = 4.0


@functools.cache
def _cv2():  # type: ignore[no-untyped-def]
    """OpenCV, set once to one thread per call (the audit runs two calls at a time)."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def keypoints(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """ORB keypoint positions (K, 2) and descriptors (K, 32) of a uint8 grey image."""
    cv2 = _cv2()
    found, desc = cv2.ORB_create(nfeatures=FEATURES).detectAndCompute(grey, None)
    return np.asarray([k.pt for k in found], dtype=np.float32).reshape(-1, 2), desc


def inliers(
    a: tuple[np.ndarray, np.ndarray | None], b: tuple[np.ndarray, np.ndarray | None]
) -> int:
    """Matches between two photos that agree on one affine transform."""
    (pa, da), (pb, db) = a, b
    if da is None or db is None or len(da) < 3 or len(db) < 3:
        return 0
    cv2 = _cv2()
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    best: dict[int, object] = {}  # one match per keypoint of b: the closest
    for m in pairs:
        if len(m) == 2 and m[0].distance < RATIO * m[1].distance:
            seen = best.get(m[0].trainIdx)
            if seen is None or m[0].distance < seen.distance:  # type: ignore[attr-defined]
                best[m[0].trainIdx] = m[0]
    good = list(best.values())
    if len(good) < 3:
        return 0
    src = pa[[m.queryIdx for m in good]]  # type: ignore[attr-defined]
    dst = pb[[m.trainIdx for m in good]]  # type: ignore[attr-defined]
    _, mask = cv2.estimateAffine2D(src, dst, ransacReprojThreshold=REPROJECTION)
    return int(mask.sum()) if mask is not None else 0
