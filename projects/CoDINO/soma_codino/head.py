"""The Co-DINO query head: encoder, two-stage mixed query selection, DN, decoder and DETR losses.

Official: DGOD/projects/CO_DETR/codetr/co_dino_head.py (CoDINOHead) with the values of
DGOD/configs/_base_/models/dinov2_codetr.py. Seven unshared cls/reg branch copies serve the decoder layers
(0..L-1) and the encoder proposals (index L). The losses are the same three (quality focal, L1,
GIoU) on the decoder layers (Hungarian), the encoder's top-k proposals (Hungarian), the DN queries
(fixed targets) and the auxiliary heads' customised positive queries (fixed targets).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from soma_d2.layers import (
    box_sine_embedding,
    hungarian_match,
    inverse_sigmoid,
    sine_position_encoding,
)

from .denoising import DenoisingGenerator, DNMeta, dn_targets
from .losses import detr_losses, match_cost
from .transformer import (
    DeformableEncoder,
    DinoDecoder,
    encoder_proposals,
)

__all__ = ["CoDINOHead"]


def _reg_branch(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim),
                         nn.ReLU(inplace=True), nn.Linear(dim, 4))


class CoDINOHead(nn.Module):
    """Query head; `forward` returns a dict of raw predictions, `losses` the named loss terms."""

    def __init__(self, *, num_classes: int, dim: int = 256, num_queries: int = 900,
                 enc_layers: int = 6, dec_layers: int = 6, heads: int = 8, levels: int = 5,
                 points: int = 4, ffn_dim: int = 2048, enc_temperature: float = 20.0,
                 dn_queries: int = 100, dn_label_noise: float = 0.5, dn_box_noise: float = 1.0,
                 loss_weights: tuple[float, float, float] = (1.0, 5.0, 2.0),
                 match_weights: tuple[float, float, float] = (2.0, 5.0, 2.0),
                 num_aux_heads: int = 2, gn_groups: int = 32, encoder_checkpoint: int = 0):
        super().__init__()
        self.num_classes, self.dim, self.num_queries = num_classes, dim, num_queries
        self.levels, self.enc_temperature = levels, enc_temperature
        self.loss_weights, self.match_weights = loss_weights, match_weights
        self.encoder = DeformableEncoder(enc_layers, dim, heads, levels, points, ffn_dim,
                                         checkpoint_layers=encoder_checkpoint)
        self.decoder = DinoDecoder(dec_layers, dim, heads, levels, points, ffn_dim)
        # official: torch.Tensor(5, 256) left uninitialised (C3); a normal init is used instead
        self.level_embed = nn.Parameter(torch.empty(levels, dim).normal_())
        self.query_embed = nn.Embedding(num_queries, dim)
        self.enc_output = nn.Linear(dim, dim)
        self.enc_output_norm = nn.LayerNorm(dim)
        cls = nn.Linear(dim, num_classes)
        nn.init.constant_(cls.bias, -math.log((1 - 0.01) / 0.01))
        reg = _reg_branch(dim)
        nn.init.constant_(reg[-1].weight, 0.0)
        nn.init.constant_(reg[-1].bias, 0.0)
        self.cls_branches = nn.ModuleList(copy.deepcopy(cls) for _ in range(dec_layers + 1))
        self.reg_branches = nn.ModuleList(copy.deepcopy(reg) for _ in range(dec_layers + 1))
        self.dn_generator = (DenoisingGenerator(num_classes, dim, dn_queries, dn_label_noise,
                                                dn_box_noise) if dn_queries > 0 else None)
        self.downsample = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1),
                                        nn.GroupNorm(gn_groups, dim))
        self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(num_aux_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_aux_heads))

    # ---- forward ------------------------------------------------------------------------------
    def encode(self, feats: list[torch.Tensor]) -> dict:
        """Encoder over the 5 neck levels; returns memory, shapes and the 6 aux maps."""
        batch = feats[0].shape[0]
        shapes = [tuple(f.shape[-2:]) for f in feats]
        src, pos = [], []
        for level, f in enumerate(feats):
            h, w = f.shape[-2:]
            p = sine_position_encoding(batch, h, w, self.dim // 2, f.device,
                                       temperature=self.enc_temperature)
            src.append(f.flatten(2).transpose(1, 2))
            pos.append(p.to(f.dtype).flatten(2).transpose(1, 2) + self.level_embed[level])
        memory = self.encoder(torch.cat(src, 1), torch.cat(pos, 1), shapes)
        maps, start = [], 0
        for h, w in shapes:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(batch, -1, h, w))
            start += h * w
        maps.append(self.downsample(maps[-1]))
        return {"memory": memory, "shapes": shapes, "aux_maps": maps}

    def forward(self, enc: dict, gt_labels: list[torch.Tensor] | None = None,
                gt_boxes: list[torch.Tensor] | None = None) -> dict:
        """Two-stage selection + DN (when GT is given) + decoder; predictions per layer."""
        memory, shapes = enc["memory"], enc["shapes"]
        batch = memory.shape[0]
        out_memory, proposals = encoder_proposals(memory, shapes)
        out_memory = self.enc_output_norm(self.enc_output(out_memory))
        enc_logits = self.cls_branches[-1](out_memory)
        enc_coords = self.reg_branches[-1](out_memory) + proposals
        topk = enc_logits.max(-1)[0].topk(self.num_queries, dim=1)[1]
        topk_logits = enc_logits.gather(1, topk[..., None].expand(-1, -1, self.num_classes))
        topk_coords = enc_coords.gather(1, topk[..., None].expand(-1, -1, 4))
        query = self.query_embed.weight[None].expand(batch, -1, -1)
        ref_logits = topk_coords.detach()
        mask, meta = None, None
        if gt_labels is not None and self.dn_generator is not None:
            dn_content, dn_refs, mask, meta = self.dn_generator(gt_labels, gt_boxes,
                                                                self.num_queries)
            query = torch.cat([dn_content, query], 1)
            ref_logits = torch.cat([dn_refs, ref_logits], 1)
        outputs, refs = self.decoder(query, ref_logits.sigmoid(), memory, shapes,
                                     self.reg_branches, mask)
        logits, boxes = self.predict(outputs, refs)
        return {"logits": logits, "boxes": boxes, "dn_meta": meta,
                "enc_logits": topk_logits, "enc_boxes": topk_coords.sigmoid()}

    def predict(self, outputs: list[torch.Tensor], refs: list[torch.Tensor]):
        """Look-forward-twice: layer l's box = reg_l(normed out_l) + logit(un-detached ref_l)."""
        logits, boxes = [], []
        for index, out in enumerate(outputs):
            logits.append(self.cls_branches[index](out))
            boxes.append((self.reg_branches[index](out) + inverse_sigmoid(refs[index])).sigmoid())
        return logits, boxes

    def forward_aux(self, enc: dict, refs: torch.Tensor, head_index: int):
        """Customised positive queries: content from the box's sine embedding (x, y, w, h order),
        through the shared decoder without attention mask."""
        embed = box_sine_embedding(refs, self.dim // 2, 10000.0, order="xywh")
        query = self.aux_pos_trans_norm[head_index](self.aux_pos_trans[head_index](embed))
        outputs, ref_list = self.decoder(query, refs, enc["memory"], enc["shapes"],
                                         self.reg_branches, None)
        return self.predict(outputs, ref_list)

    # ---- losses -------------------------------------------------------------------------------
    def _named(self, prefix: str, per_layer: list[dict[str, torch.Tensor]]) -> dict:
        losses = {}
        last = len(per_layer) - 1
        for index, terms in enumerate(per_layer):
            tag = "" if index == last else f"_d{index}"
            for k, v in terms.items():
                losses[f"{prefix}{tag}_{k}"] = v
        return losses

    def _matched_losses(self, logits, boxes, gt_labels, gt_boxes, canvas):
        labels, targets, weights = [], [], []
        for i in range(logits.shape[0]):
            lab = torch.full((logits.shape[1],), self.num_classes, dtype=torch.long,
                             device=logits.device)
            tgt = boxes.new_zeros(logits.shape[1], 4)
            wt = boxes.new_zeros(logits.shape[1])
            if len(gt_labels[i]):
                cost = match_cost(logits[i].detach(), boxes[i].detach(), gt_labels[i], gt_boxes[i],
                                  canvas, self.match_weights)
                qi, gi = hungarian_match(cost)
                lab[qi], tgt[qi], wt[qi] = gt_labels[i][gi], gt_boxes[i][gi], 1.0
            labels.append(lab)
            targets.append(tgt)
            weights.append(wt)
        num_pos = sum(len(x) for x in gt_labels)
        return detr_losses(logits.flatten(0, 1), boxes.flatten(0, 1), torch.cat(labels),
                           torch.cat(targets), torch.cat(weights), canvas, self.loss_weights,
                           num_pos)

    def losses(self, out: dict, gt_labels: list[torch.Tensor], gt_boxes: list[torch.Tensor],
               canvas: tuple[int, int]) -> dict[str, torch.Tensor]:
        """loss_dino_* (decoder layers + encoder proposals) and loss_dino_dn_* (DN queries)."""
        meta: DNMeta | None = out["dn_meta"]
        num_dn = meta.num_queries if meta is not None else 0
        per_layer, dn_layer = [], []
        for logits, boxes in zip(out["logits"], out["boxes"]):
            per_layer.append(self._matched_losses(logits[:, num_dn:], boxes[:, num_dn:],
                                                  gt_labels, gt_boxes, canvas))
            if num_dn:
                dn_layer.append(self._dn_losses(logits[:, :num_dn], boxes[:, :num_dn], meta,
                                                gt_labels, gt_boxes, canvas))
        losses = self._named("loss_dino", per_layer)
        enc = self._matched_losses(out["enc_logits"], out["enc_boxes"], gt_labels, gt_boxes,
                                   canvas)
        losses.update({f"loss_dino_enc_{k}": v for k, v in enc.items()})
        if dn_layer:
            losses.update(self._named("loss_dino_dn", dn_layer))
        elif self.dn_generator is not None:  # no GT in the batch: same keys, zero value
            zero = (out["logits"][-1].sum() * 0.0
                    + self.dn_generator.label_embedding.weight.sum() * 0.0)
            losses.update(self._named("loss_dino_dn", [
                {k: zero for k in ("cls", "bbox", "giou")} for _ in out["logits"]]))
        return losses

    def _dn_losses(self, logits, boxes, meta, gt_labels, gt_boxes, canvas):
        targets = [dn_targets(meta, gt_labels[i], gt_boxes[i], self.num_classes)
                   for i in range(logits.shape[0])]
        labels, tboxes, weights = (torch.cat(t) for t in zip(*targets))
        return detr_losses(logits.flatten(0, 1), boxes.flatten(0, 1), labels, tboxes, weights,
                           canvas, self.loss_weights, float(weights.sum()))

    def aux_query_losses(self, logits_list, boxes_list, labels, targets, weights, canvas,
                         name: str) -> dict[str, torch.Tensor]:
        """loss_aux_query_<name>_*: fixed one-to-one targets on every decoder layer."""
        per_layer = [detr_losses(lg.flatten(0, 1), bx.flatten(0, 1), labels, targets, weights,
                                 canvas, self.loss_weights, float(weights.sum()))
                     for lg, bx in zip(logits_list, boxes_list)]
        return self._named(f"loss_aux_query_{name}", per_layer)
