"""Why holistic training does not beat sliced training on riverworld: where the river<->pond
errors are, and how far the trained model looks.

Reads the held-out scenes that ``holistic_vs_sliced.py`` predicted (their ``labels/holistic``
and ``labels/sliced``) and reports, per arm:

- river pixels called pond, by their distance along the river to the scene border, where the
  river ends (the one cue that says "river" in riverworld);
- pond pixels called river, by pond kind (oxbow arc or compact blob);

and, for the holistic checkpoint, its effective receptive field: the gradient of the
river-minus-pond logit at river pixels with respect to the input, and the radius that holds
50 % and 90 % of its mass.

    python benchmarks/confusion_by_reach.py --scenes benchmarks/scratch/hvs \\
        --holistic elegantviz/weights/riverworld-cpu.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BINS = (0, 128, 256, 384, 512, 1 << 30)


def river_along_distance(spec, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, the distance along its river's axis to the nearer scene border (inf off rivers)."""
    from elegantviz.data.synthetic import render_labels

    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.full(shape, np.inf)
    rivers, _ = spec.shapes()
    for r in rivers:
        along, length = (ys, h) if r.vertical else (xs, w)
        m = r.mask(ys, xs)
        out[m] = np.minimum(along[m], length - 1 - along[m])
    labels = render_labels(spec, 0, h, 0, w)
    out[labels != 3] = np.inf  # a pond drawn over a river is a pond
    return out


def pond_kinds(spec, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    _, ponds = spec.shapes()
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    kinds = {"oxbow": np.zeros(shape, bool), "blob": np.zeros(shape, bool)}
    for p in ponds:
        kinds["oxbow" if p.span else "blob"] |= p.mask(ys, xs)
    return kinds


def effective_field(ckpt: str, url: str, dist: np.ndarray, points: int = 4, patch: int = 8) -> dict:
    """Radius (px) holding 50 % / 90 % of |d(river - pond logit) / d input| for river patches."""
    import torch

    from elegantviz.engine.checkpoints import load_model
    from elegantviz.io.store import open_scene

    trained = load_model(ckpt)
    model, table, norm = trained.model, trained.classes, trained.norm
    scene = open_scene(url)
    x, _ = norm.apply(scene.image().compute(), scene.nodata)
    image = torch.from_numpy(x)[None].requires_grad_(True)
    river, pond = table.names.index("river"), table.names.index("pond")
    h, w = dist.shape
    far = np.argwhere(np.isfinite(dist) & (dist >= 256))
    near = np.argwhere(np.isfinite(dist) & (dist < 128))
    rng = np.random.default_rng(0)
    rows = []
    logits = model(image).logits[0]
    for kind, cands in (("far", far), ("near", near)):
        for y, xx in cands[rng.choice(len(cands), size=min(points, len(cands)), replace=False)]:
            y0, x0 = max(0, y - patch // 2), max(0, xx - patch // 2)
            score = (logits[river, y0 : y0 + patch, x0 : x0 + patch] - logits[pond, y0 : y0 + patch, x0 : x0 + patch]).sum()
            (g,) = torch.autograd.grad(score, image, retain_graph=True)
            mass = g[0].abs().sum(0).numpy()
            yy, xg = np.mgrid[0:h, 0:w]
            r = np.hypot(yy - y, xg - xx).ravel()
            order = np.argsort(r)
            cum = np.cumsum(mass.ravel()[order]) / mass.sum()
            rows.append({"where": kind, "y": int(y), "x": int(xx), "along_border_px": float(dist[y, xx]),
                         "r50_px": float(r[order][np.searchsorted(cum, 0.5)]),
                         "r90_px": float(r[order][np.searchsorted(cum, 0.9)]),
                         "river_minus_pond": float(score) / patch**2})
    return {"points": rows, "r50_px_median": float(np.median([p["r50_px"] for p in rows])),
            "r90_px_median": float(np.median([p["r90_px"] for p in rows]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=str(HERE / "scratch" / "hvs"), help="folder with test-*.zarr")
    ap.add_argument("--holistic", default=None, help="holistic checkpoint, for the receptive field")
    ap.add_argument("--out", default=str(HERE / "results" / "confusion_by_reach.json"))
    args = ap.parse_args()

    from elegantviz.data.synthetic import RiverworldSpec
    from elegantviz.io.store import open_scene

    tests = sorted(Path(args.scenes).glob("test-*.zarr"))
    if not tests:
        raise SystemExit(f"{args.scenes}: no test-*.zarr; run benchmarks/holistic_vs_sliced.py first")
    arms = ("holistic", "sliced")
    by_dist = {a: np.zeros((len(BINS) - 1, 2), np.int64) for a in arms}  # (river px, called pond)
    by_kind = {a: {k: [0, 0] for k in ("oxbow", "blob")} for a in arms}
    dists = {}
    for path in tests:
        scene = open_scene(str(path))
        seed = int(scene.meta["job"]["seed"])
        h, w = scene.shape[-2:]
        spec = RiverworldSpec(height=h, width=w, seed=seed)
        dist = river_along_distance(spec, (h, w))
        dists[str(path)] = dist
        kinds = pond_kinds(spec, (h, w))
        gt = scene.label("gt").compute()
        for a in arms:
            pred = scene.label(a).compute()
            b = np.digitize(dist[np.isfinite(dist)], BINS) - 1
            as_pond = pred[np.isfinite(dist)] == 4
            np.add.at(by_dist[a], (b, 0), 1)
            np.add.at(by_dist[a], (b, 1), as_pond.astype(np.int64))
            for k, m in kinds.items():
                m = m & (gt == 4)
                by_kind[a][k][0] += int(m.sum())
                by_kind[a][k][1] += int((pred[m] == 3).sum())
    result: dict = {"scenes": [str(p) for p in tests], "river_as_pond_by_along_border_distance": {},
                    "pond_as_river_by_kind": {}}
    print("river pixels called pond, by distance along the river to the scene border")
    for i in range(len(BINS) - 1):
        key = f"{BINS[i]}-{BINS[i + 1] if BINS[i + 1] < 1 << 30 else 'inf'}"
        row = {a: {"river_px": int(by_dist[a][i, 0]),
                   "called_pond": float(by_dist[a][i, 1] / max(by_dist[a][i, 0], 1))} for a in arms}
        result["river_as_pond_by_along_border_distance"][key] = row
        print(f"  {key:>9s} px: " + "  ".join(f"{a} {row[a]['called_pond']:.3f}" for a in arms)
              + f"  ({row['holistic']['river_px']:,d} px)")
    print("pond pixels called river, by pond kind")
    for k in ("oxbow", "blob"):
        row = {a: {"pond_px": by_kind[a][k][0], "called_river": by_kind[a][k][1] / max(by_kind[a][k][0], 1)}
               for a in arms}
        result["pond_as_river_by_kind"][k] = row
        print(f"  {k:>6s}: " + "  ".join(f"{a} {row[a]['called_river']:.3f}" for a in arms))
    if args.holistic:
        first = str(tests[0])
        result["holistic_effective_field"] = effective_field(args.holistic, first, dists[first])
        ef = result["holistic_effective_field"]
        print(f"holistic effective field: r50 {ef['r50_px_median']:.0f} px, r90 {ef['r90_px_median']:.0f} px (median)")
        for p in ef["points"]:
            print(f"  {p['where']:>4s} ({p['y']},{p['x']}) along {p['along_border_px']:.0f}: "
                  f"r50 {p['r50_px']:.0f} r90 {p['r90_px']:.0f} river-pond {p['river_minus_pond']:+.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
