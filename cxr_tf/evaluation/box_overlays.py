"""Pictures of the pointing game (`localization`): the model's input, its Grad-CAM map and the
radiologists' boxes, as a grid for the report (`plot_overlays`) or one file per box
(`save_box_overlays`, for tools/gradcam_bbox.py). Matplotlib, imported when drawing."""

import dataclasses
import os

from cxr_tf import labels as labels_lib


def plot_overlays(path, examples):
    """A grid PNG: one row per finding, its first pairs as columns: the model's input, the
    Grad-CAM map (jet), the boxes (green: hit, red: missed, yellow: on a map that points
    nowhere) and the maximum (white cross)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import patches
    from matplotlib import pyplot as plt

    rows = [label for label in labels_lib.LABELS if examples.get(label)]
    cols = max((len(examples[label]) for label in rows), default=1)
    height = max(len(rows), 1)
    fig, axes = plt.subplots(height, cols, figsize=(2.6 * cols, 2.8 * height), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, label in enumerate(rows):
        for c, pair in enumerate(examples[label]):
            ax, size = axes[r, c], pair.image.shape[0]
            extent = (0, size, size, 0)  # pixel edges, so boxes in input pixels line up
            ax.imshow(pair.image, cmap="gray", vmin=0, vmax=255, extent=extent)
            ax.imshow(pair.heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=extent)
            colours = ["yellow"] * len(pair.boxes) if pair.flat else \
                ["lime" if hit else "red" for hit in pair.hits]
            for (x, y, w, h), colour in zip(pair.boxes, colours):
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, linewidth=1.5,
                                               edgecolor=colour))
            if pair.peak is not None:  # a flat map points nowhere: no cross
                ax.plot(pair.peak[1] + 0.5, pair.peak[0] + 0.5, "w+", markersize=10, mew=2)
            outcome = "flat map" if pair.flat else "hit" if any(pair.hits) else "miss"
            ax.set_title(f"{label}\n{pair.image_id}: {outcome}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_box_overlays(pairs, out_dir):
    """Passes the pairs on, writing `<image>_<finding>_<hit|miss|flat>.png` into out_dir for
    each of their boxes (one box per picture, drawn as in `plot_overlays`)."""
    os.makedirs(out_dir, exist_ok=True)
    for pair in pairs:
        outcomes = ["flat"] * len(pair.boxes) if pair.flat else \
            ["hit" if hit else "miss" for hit in pair.hits]
        for i, (box, outcome) in enumerate(zip(pair.boxes, outcomes)):
            one = dataclasses.replace(pair, boxes=[box], hits=pair.hits[i:i + 1])
            stem = os.path.splitext(pair.image_id)[0]
            name = f"{stem}_{pair.label}_{outcome}.png"
            plot_overlays(os.path.join(out_dir, name), {pair.label: [one]})
        yield pair
