"""Compare the hardware's class scores with the golden model's, image by image; a mismatch always
raises (after all images ran, so the report lists every wrong one)."""
from __future__ import annotations

import numpy as np


class Mismatch(AssertionError):
    pass


class Scoreboard:
    def __init__(self, expected: np.ndarray):
        self.expected = np.asarray(expected, dtype=np.int64)  # [images, classes]
        self.wrong: list[dict] = []
        self.checked = 0

    def check(self, i: int, scores: list[int], lasts: list[int]) -> bool:
        """One image's beats: the scores and their ``tlast`` flags (only on the last class)."""
        want = self.expected[i]
        k = len(want)
        ok = list(scores) == [int(v) for v in want] and list(lasts) == [0] * (k - 1) + [1]
        if not ok:
            cls = next((c for c in range(k) if scores[c] != want[c]), None)
            self.wrong.append({"image": i, "first_wrong_class": cls, "got": [int(v) for v in scores],
                               "want": [int(v) for v in want], "tlast": list(lasts)})
        self.checked += 1
        return ok

    def raise_if_wrong(self) -> None:
        if self.wrong:
            w = self.wrong[0]
            raise Mismatch(f"{len(self.wrong)} of {self.checked} images differ from the golden model; first: image "
                           f"{w['image']}, class {w['first_wrong_class']}: got {w['got']}, want {w['want']}")
