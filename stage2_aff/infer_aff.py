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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lib import dist
from lib.cli import add_bool, add_data_args, not_in_paper
from lib.crf import dense_crf
from lib.datasets import resolve_list
from lib.datasets.affinity_dataset import POOL
from lib.datasets.layout import check_files_exist
from lib.datasets.datasets import load_image
from lib.datasets.transforms import Normalize, to_chw_tensor
from lib.errors import UserError, check_args, check_writable_dir, run_main
from lib.io import check_finite_output, load_cam, save_label_png
from lib.models import build_model
from lib.random_walk import METHODS, cams_with_background, random_walk
from lib.weights import load_weights_into

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
    p.add_argument("--backbone_width", type=float, default=1.0,
                   help="channel multiplier of ResNet-38 (1.0 = the paper)")
    p.add_argument("--num_workers", "--workers", dest="num_workers", type=int, default=2,
                   help="data-loading worker processes")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0)
    demo = not_in_paper(p)
    add_bool(demo, "crf", False, "dense-CRF post-processing of the rw scores (the paper: off; "
             "SEAM's infer_aff has it; the from-scratch demo uses it)")
    demo.add_argument("--crf_iters", type=int, default=1,
                      help="mean-field iterations of --crf (1 as in SEAM's infer_aff)")
    args = p.parse_args(argv)
    check_args(args, {"alpha": "> 0", "beta": "> 0", "logt": ">= 0", "crf_iters": ">= 1",
                      "backbone_width": "> 0", "num_workers": ">= 0", "threads": ">= 0"})
    return args


class _Images(Dataset):
    """(id, uint8 image (H, W, 3), normalised (3, H, W), CAM keys (K,), CAMs (K, H, W))."""

    def __init__(self, layout, ids, cam_dir: Path):
        self.layout, self.ids, self.cam_dir = layout, ids, cam_dir
        self.normalize = Normalize()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        image_id = self.ids[i]
        path = self.layout.image_path(image_id)
        image = load_image(path)
        cam_path = self.cam_dir / f"{image_id}.npz"
        if not cam_path.is_file():
            raise FileNotFoundError(f"infer_aff: CAM file {cam_path} does not exist")
        keys, cams = load_cam(cam_path)
        if cams.shape[1:] != image.shape[:2]:
            raise UserError(f"{cam_path}: CAMs {cams.shape} do not match image {path} "
                             f"of size {image.shape[:2]}")
        return {"id": image_id, "image_uint8": image, "image": to_chw_tensor(self.normalize(image)),
                "keys": keys, "cams": cams}


def _first(batch):
    return batch[0]


@torch.no_grad()
def rw_scores(model, image: torch.Tensor, cams: torch.Tensor, alpha: float, beta: float,
              logt: int, method: str = "auto") -> torch.Tensor:
    """Random-walk scores at full resolution (module docstring).

    image: (3, H, W) normalised; cams: (K, H, W) in [0, 1], K >= 1.
    Returns (K+1, H, W) float32 scores, channel 0 background, channel i+1 = cams[i].
    """
    _, H, W = image.shape
    Hp, Wp = -(-H // POOL) * POOL, -(-W // POOL) * POOL
    x = F.pad(image, (0, Wp - W, 0, Hp - H))[None]  # zeros bottom/right, as PSA
    feats = model.forward_features(x)[0].float()
    h, w = Hp // POOL, Wp // POOL
    if feats.shape[1:] != (h, w):
        raise RuntimeError(f"infer_aff: features {tuple(feats.shape)} are not at stride 8 of {Hp}x{Wp}")
    s = cams_with_background(cams.to(feats.device, torch.float32), alpha)
    s = F.avg_pool2d(F.pad(s, (0, Wp - W, 0, Hp - H))[None], POOL, POOL)[0]
    rw = random_walk(s, feats, beta=beta, logt=logt, radius=RADIUS, method=method)
    up = F.interpolate(rw[None], size=(Hp, Wp), mode="bilinear", align_corners=False)[0]
    return up[:, :H, :W]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = dist.setup_distributed(args.device)
    layout, all_ids = resolve_list(args.dataset, args.data_root, args.infer_list)
    out = Path(args.out_rw)
    cam_dir = Path(args.cam_dir)
    if not cam_dir.is_dir():
        raise UserError(f"{cam_dir}: --cam_dir is not a directory")
    check_writable_dir(out)
    ids = dist.shard(all_ids, rank, world)
    todo = [i for i in ids if args.overwrite or not (out / f"{i}.png").is_file()]
    if dist.is_main():
        print(f"infer_aff: {len(ids) - len(todo)} of {len(ids)} images already done"
              + (" (rank 0)" if world > 1 else ""))
    if todo:
        check_files_exist([layout.image_path(i) for i in todo], "image")
        check_files_exist([cam_dir / f"{i}.npz" for i in todo], "CAM file")
        model = build_model("aff", width=args.backbone_width)
        load_weights_into(model, args.weights)
        model.to(device).eval()
        loader = DataLoader(_Images(layout, todo, cam_dir), batch_size=1, collate_fn=_first,
                            num_workers=args.num_workers)
        for item in tqdm(loader, total=len(todo), desc="infer_aff", disable=not dist.is_main()):
            keys, cams = item["keys"], item["cams"]
            H, W = item["image_uint8"].shape[:2]
            if keys.shape[0] == 0:
                label = np.zeros((H, W), np.uint8)  # no class: the walk would give background
            else:
                scores = rw_scores(model, item["image"].to(device), torch.from_numpy(cams),
                                   args.alpha, args.beta, args.logt, args.method)
                if args.crf:
                    p = scores / scores.sum(0, keepdim=True).clamp_min(1e-5)
                    scores = torch.from_numpy(dense_crf(item["image_uint8"], p.cpu().numpy(),
                                                        n_iter=args.crf_iters))
                check_finite_output(scores, f"{out / item['id']}.png (image {item['id']})")
                lut = np.concatenate([[0], keys + 1]).astype(np.uint8)
                label = lut[scores.argmax(0).cpu().numpy()]
            save_label_png(out / f"{item['id']}.png", label)
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    run_main(main, "infer_aff")
