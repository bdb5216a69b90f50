r"""Stage 2 — random-walk pseudo-labels from the stage-1 CAMs and AffinityNet (docs/METHOD.md section 5.5).

Per image (H, W), with Hp = 8*ceil(H/8), Wp = 8*ceil(W/8):

    x      = normalised image zero-padded (bottom/right) to (Hp, Wp)
    f      = AffinityNet.forward_features(x)                          (D, Hp/8, Wp/8)
    s      = [(1 - max_k M_k)^alpha, M_1..M_K]  zero-padded, 8x8 average-pooled   (K+1, Hp/8, Wp/8)
    rw     = s @ T^(2^logt),  T = W / colsum(W),  W = a^beta on radius-5 pairs, 1 on the diagonal
    label  = [0, k_1+1, ..., k_K+1][argmax_c  crop_{H,W}(bilinear_x8(rw))]

(M_k: CAMs of the K present classes from ``<cam_dir>/<id>.npz``). An image whose CAM has no class
is all background. ``--crf``: the upsampled rw scores, normalised per pixel, go through the dense
CRF (``lib.crf.dense_crf``, ``--crf_iters`` mean-field iterations) before the argmax.
Writes ``<out_rw>/<id>.png`` (lib.io label PNG); finished files are skipped unless --overwrite.

Usage: python -m stage2_aff.infer_aff --weights EXP/ckpts/aff.pth --infer_list train_aug \
         --data_root DIR --cam_dir EXP/plabels/train/cam --out_rw EXP/plabels/train/rw
Under ``torchrun --nproc_per_node K`` the ids are sharded over the processes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.cli import add_backbone_width, add_bool, add_data_args, add_num_workers, not_in_paper
from lib.workers import infer_loader_workers
from lib.crf import dense_crf
from lib.datasets import InferenceDataset, resolve_list
from lib.datasets.layout import check_files_exist
from lib.errors import UserError, check_args, run_main
from lib.inference import InferenceRun
from lib.io import check_finite_output, load_cam, save_label_png, scores_to_label
from lib.models import build_model
from lib.random_walk import METHODS, padded_size, random_walk_scores

RADIUS = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="trained AffinityNet (.pth state_dict)")
    p.add_argument("--infer_list", default="train_aug", help="split name or list file")
    add_data_args(p)
    p.add_argument("--cam_dir", required=True, help="stage-1 CAM artifacts (<id>.npz)")
    p.add_argument("--out_rw", required=True, help="output folder of label PNGs")
    p.add_argument("--alpha", type=float, default=6, help="background power (1 - max_k M_k)^alpha")
    p.add_argument("--beta", type=float, default=8, help="affinity power")
    p.add_argument("--logt", type=int, default=6, help="walk length 2^logt")
    p.add_argument("--method", default="auto", choices=list(METHODS),
                   help="random-walk evaluation: dense (original T^(2^logt)), sparse, auto")
    add_backbone_width(p)
    add_num_workers(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0)
    demo = not_in_paper(p)
    add_bool(demo, "crf", False, "dense-CRF post-processing of the rw scores (the paper: off; "
             "SEAM's infer_aff has it; the from-scratch demo uses it)")
    demo.add_argument("--crf_iters", type=int, default=1,
                      help="mean-field iterations of --crf (1 as in SEAM's infer_aff)")
    demo.add_argument("--upscale", type=int, default=1,
                      help="walk on the image enlarged by this factor, i.e. at output stride "
                           "8/upscale (the CPU demo's 96 px images give a 12x12 grid at stride 8; "
                           "docs/DEMO.md); 1 = the paper")
    args = p.parse_args(argv)
    args.num_workers = infer_loader_workers(args.num_workers)
    check_args(args, {"alpha": "> 0", "beta": "> 0", "logt": ">= 0", "crf_iters": ">= 1",
                      "upscale": ">= 1", "backbone_width": "> 0", "num_workers": ">= 0",
                      "threads": ">= 0"})
    return args


class _ImagesAndCams(InferenceDataset):
    """InferenceDataset items plus the image's stage-1 CAMs: "keys" (K,), "cams" (K, H, W)."""

    def __init__(self, layout, ids, cam_dir: Path):
        super().__init__(layout, ids)
        self.cam_dir = cam_dir
        check_files_exist([cam_dir / f"{i}.npz" for i in self.ids], "CAM file")

    def __getitem__(self, i):
        item = super().__getitem__(i)
        cam_path = self.cam_dir / f"{item['id']}.npz"
        keys, cams = load_cam(cam_path)
        if cams.shape[1:] != item["image_uint8"].shape[:2]:
            raise UserError(f"{cam_path}: CAMs {cams.shape} do not match image "
                            f"{self.layout.image_path(item['id'])} of size "
                            f"{item['image_uint8'].shape[:2]}")
        return {**item, "keys": keys, "cams": cams}


@torch.no_grad()
def rw_scores(model, image: torch.Tensor, cams, alpha: float, beta: float,
              logt: int, method: str = "auto", upscale: int = 1) -> torch.Tensor:
    """Random-walk scores at full resolution (module docstring): AffinityNet on the padded
    image, then ``lib.random_walk.random_walk_scores``.

    image: (3, H, W) normalised; cams: (K, H, W) in [0, 1], K >= 1 (numpy or tensor).
    upscale: walk on the image and CAMs bilinearly enlarged by this factor (the grid becomes
    upscale x finer: an output stride of 8 / upscale), then area-average the scores back to
    (H, W); 1 = the paper.
    Returns (K+1, H, W) float32 scores, channel 0 background, channel i+1 = cams[i].
    """
    _, H0, W0 = image.shape
    if upscale != 1:
        size = (H0 * upscale, W0 * upscale)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        cams = torch.as_tensor(np.asarray(cams), dtype=torch.float32)
        cams = F.interpolate(cams[None], size=size, mode="bilinear", align_corners=False)[0]
    _, H, W = image.shape
    Hp, Wp = padded_size(H, W)
    x = F.pad(image, (0, Wp - W, 0, Hp - H))[None]  # zeros bottom/right, as PSA
    feats = model.forward_features(x)[0].float()
    scores = random_walk_scores(cams, feats, alpha, beta, logt, RADIUS, method)
    if upscale != 1:
        scores = F.interpolate(scores[None], size=(H0, W0), mode="area")[0]
    return scores


def main(argv=None) -> None:
    args = parse_args(argv)
    run = InferenceRun("infer_aff", args.device, args.threads)
    layout, all_ids = resolve_list(args.dataset, args.data_root, args.infer_list)
    out = Path(args.out_rw)
    cam_dir = Path(args.cam_dir)
    if not cam_dir.is_dir():
        raise UserError(f"{cam_dir}: --cam_dir is not a directory")
    todo = run.select(all_ids, lambda i: [out / f"{i}.png"], args.overwrite)
    if todo:
        dataset = _ImagesAndCams(layout, todo, cam_dir)  # every image and CAM file exists
        model = run.load_model(build_model("aff", width=args.backbone_width), args.weights)
        for item in run.progress(run.loader(dataset, args.num_workers), len(todo)):
            keys, cams = item["keys"], item["cams"]
            if keys.shape[0] == 0:  # no class: the walk would give background
                label = np.zeros(item["image_uint8"].shape[:2], np.uint8)
            else:
                scores = rw_scores(model, item["image"].to(run.device), cams, args.alpha,
                                   args.beta, args.logt, args.method, args.upscale)
                if args.crf:
                    p = scores / scores.sum(0, keepdim=True).clamp_min(1e-5)
                    scores = torch.from_numpy(dense_crf(item["image_uint8"], p.cpu().numpy(),
                                                        n_iter=args.crf_iters))
                check_finite_output(scores, f"{out / item['id']}.png (image {item['id']})")
                label = scores_to_label(scores, keys)
            save_label_png(out / f"{item['id']}.png", label)
    run.finish()


if __name__ == "__main__":
    run_main(main, "infer_aff")
