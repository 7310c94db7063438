"""Fits the generic reference: the average of many adult faces, each TPS-warped onto their mean
landmarks first, so the average keeps crisp features where a plain mean of aligned crops blurs.

Sources are mixed so that the face is nobody's in particular: adults (18-70) of `faces-bulk`
(All-Age-Faces, mostly East Asian), one photo per person of `identity-pairs` (RMFD/AFDB) and the
FFHQ sample (CC BY-NC-SA 4.0). Each source is weighted by the share given below, not by its count,
so 10 FFHQ faces are not drowned by 1,500 others. Colour and light are taken from the target at
use (colour matching), so the average's own skin tone matters little. Writes
`tasks/generic_face.png`, `tasks/generic_face.npz` and the list of photos used
(`benchmarks/generic_face_data.txt`). The result inherits the sources' licences (research and
non-commercial, FFHQ share-alike).

    .venv/bin/python -m benchmarks.fit_generic_face --data ../shared/data
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import cv2
import numpy as np

from tasks.align import align_face
from tasks.generic import FACE, LANDMARKS
from tasks.landmarks import detect_faces
from tasks.warp import warp_reference

SIZE = 256
DATA_LIST = Path(__file__).with_name("generic_face_data.txt")
WEIGHTS = {"faces-bulk": 0.5, "identity-pairs": 0.3, "ffhq-sample": 0.2}  # share of the average per source


def sources(data: Path, bulk: int) -> dict[str, list[Path]]:
    adults = [p for p in sorted((data / "faces-bulk").glob("*.jpg"))
              if 18 <= int(re.search(r"A(\d+)", p.stem).group(1)) <= 70]
    pairs: dict[str, Path] = {}
    with open(data / "identity-pairs" / "identities.csv", newline="") as f:
        for row in csv.DictReader(f):
            pairs.setdefault(row["identity"], data / "identity-pairs" / row["path"])
    return {"faces-bulk": adults[::max(1, len(adults) // bulk)][:bulk],
            "identity-pairs": list(pairs.values()),
            "ffhq-sample": sorted((data / "ffhq-sample").glob("*.png"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--bulk", type=int, default=1500, help="faces-bulk adults to use")
    args = ap.parse_args()
    data = Path(args.data)
    faces: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    used = []
    for source, paths in sources(data, args.bulk).items():
        for p in paths:
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            found = detect_faces(rgb, depth=True)
            if not found:
                continue
            crop, lm, _ = align_face(rgb, found[0], SIZE)
            faces.setdefault(source, []).append((crop, lm))
            used.append(str(p.relative_to(data)))
        print(f"{source}: {len(faces.get(source, []))} faces")
    weights = {s: WEIGHTS[s] / len(v) for s, v in faces.items()}
    total = sum(weights[s] * len(v) for s, v in faces.items())
    mean_lm = sum(weights[s] * lm for s, v in faces.items() for _, lm in v) / total
    acc = np.zeros((SIZE, SIZE, 3), np.float64)
    cover = np.zeros((SIZE, SIZE), np.float64)
    for s, v in faces.items():
        for crop, lm in v:
            warped, valid = warp_reference(crop, lm, mean_lm, (SIZE, SIZE))
            ok = (warped.sum(axis=2) > 0).astype(np.float64) * weights[s]  # inside the picture
            acc += warped * ok[..., None]
            cover += ok
    mean = (acc / np.maximum(cover, 1e-9)[..., None]).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(FACE), cv2.cvtColor(mean, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    again = detect_faces(mean, depth=True)  # the average's own landmarks, as any reference's are found
    np.savez_compressed(LANDMARKS, landmarks=(again[0] if again else mean_lm).astype(np.float32))
    DATA_LIST.write_text("# photos averaged into tasks/generic_face.png (research / non-commercial licences)\n"
                         + "\n".join(used) + "\n")
    print(f"wrote {FACE} ({FACE.stat().st_size // 1024} KB) from {len(used)} faces; FaceMesh "
          f"{'found' if again else 'did not find'} the average face")


if __name__ == "__main__":
    main()
