"""The Co-DINO sizes the harness compares, as plain values both halves read.

``tiny``: a 64-wide 4-block ViT/16 at 128 px with a 64-wide head (1 encoder, 2 decoder layers,
30 queries); ``full``: the official recipe (ViT-L/16, 24 blocks, 256-wide head, 6 + 6 layers,
900 queries) unchanged except the image side (``--image``; the official canvas is 1024, the
default here 256). ``codino_official.official_model_cfg`` applies a size to the official config,
:func:`ours_opts` gives the matching soma-d2 options.
"""
from __future__ import annotations

TINY = {
    "vit": dict(embed_dim=64, depth=4, num_heads=2, img_size=128, out_indices=[0, 1, 2, 3]),
    "lora": dict(r=4, lora_alpha=4, start_lora_idx=2),
    "dim": 64, "ffn": 128, "heads": 4, "points": 2, "enc_layers": 1, "dec_layers": 2,
    "queries": 30, "dn_queries": 10, "roi_fc": 128, "max_pos": 30, "test_topk": 30,
    "rpn_train": dict(nms_pre=200, max_per_img=50), "image": 128,
}
FULL = {"image": 256}
SIZES = {"tiny": TINY, "full": FULL}


def ours_opts(size: str, image: int, deterministic: bool) -> list[str]:
    """soma-d2 config options (on configs/dwd_released.yaml) for a size; ``deterministic``
    switches off the randomness of DN noise and of the samplers (see codino_official.py)."""
    s = SIZES[size]
    opts = ["MODEL.DEVICE", "cpu", "MODEL.SOMA.PRETRAINED", "", "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()", "INPUT.IMAGE_SIZE", str(image),
            "MODEL.CODINO.CROP_SIZE", str(image),
            # the position grid of the compared image size on both sides (no re-interpolation)
            "MODEL.VIT.IMG_SIZE", str(image)]
    if size == "tiny":
        v, lo = s["vit"], s["lora"]
        opts += ["MODEL.VIT.ARCH", "vit_s", "MODEL.VIT.EMBED_DIM", str(v["embed_dim"]),
                 "MODEL.VIT.DEPTH", str(v["depth"]), "MODEL.VIT.NUM_HEADS", str(v["num_heads"]),
                 "MODEL.VIT.OUT_INDICES", str(v["out_indices"]),
                 "MODEL.SOMA.RANK", str(lo["r"]), "MODEL.SOMA.ALPHA", str(float(lo["lora_alpha"])),
                 "MODEL.SOMA.START_BLOCK", str(lo["start_lora_idx"]),
                 "MODEL.CODINO.HIDDEN_DIM", str(s["dim"]), "MODEL.CODINO.FFN_DIM", str(s["ffn"]),
                 "MODEL.CODINO.NUM_HEADS", str(s["heads"]),
                 "MODEL.CODINO.NUM_POINTS", str(s["points"]),
                 "MODEL.CODINO.ENC_LAYERS", str(s["enc_layers"]),
                 "MODEL.CODINO.DEC_LAYERS", str(s["dec_layers"]),
                 "MODEL.CODINO.NUM_QUERIES", str(s["queries"]),
                 "MODEL.CODINO.DN_NUM_QUERIES", str(s["dn_queries"]),
                 "MODEL.CODINO.ROI_FC_DIM", str(s["roi_fc"]),
                 "MODEL.CODINO.AUX_MAX_POS", str(s["max_pos"]),
                 "MODEL.CODINO.TEST_TOPK", str(s["test_topk"]),
                 "MODEL.CODINO.RPN_PRE_NMS_TOPK", str(s["rpn_train"]["nms_pre"]),
                 "MODEL.CODINO.RPN_POST_NMS_TOPK", str(s["rpn_train"]["max_per_img"])]
    if deterministic:
        opts += ["MODEL.CODINO.DN_LABEL_NOISE", "0.0", "MODEL.CODINO.DN_BOX_NOISE", "0.0",
                 "MODEL.CODINO.RPN_BATCH_PER_IMAGE", "1000000",
                 "MODEL.CODINO.ROI_BATCH_PER_IMAGE", "1000000"]
    return opts
