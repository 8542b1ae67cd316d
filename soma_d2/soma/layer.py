"""SoMALinear: a frozen residual linear layer plus a trainable low-rank pair started from SVD.

The layer keeps ``weight`` (the frozen residual ``W - s B0 A0``), ``bias``, and trainable ``A``
(r x in) and ``B`` (out x r), so that ``state_dict()`` holds exactly ``weight``, ``bias``, ``A``,
``B`` and any Detectron2/fvcore checkpointer saves and restores it. Because the residual is formed
from ``W`` and the *stored* factors, ``weight + s B A`` equals ``W`` to rounding and the layer
computes the pretrained function at step 0 (except in the ``released`` mode, see
:meth:`SoMALinear.from_linear`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import INIT_MODES
from .svd import Triplets, decompose_weights

_PROBE_SEED = 20250315


def _probe_vectors(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(_PROBE_SEED)
    p = torch.randn(rows, generator=gen, dtype=torch.float64)
    q = torch.randn(cols, generator=gen, dtype=torch.float64)
    return p / p.norm(), q / q.norm()


_BLOCK_ELEMENTS = 1 << 17  # 1 MB of float64: the block stays in the core's cache


def _rowwise_pass(matrix: torch.Tensor, b: torch.Tensor | None = None,
                  a: torch.Tensor | None = None, scaling: float = 1.0,
                  out: torch.Tensor | None = None, with_fingerprint: bool = True
                  ) -> list[float] | None:
    """:func:`fingerprint` of ``matrix``, and optionally ``out = matrix - scaling * b @ a``.

    Works through blocks of about 131k elements (whole rows) in float64 instead of
    materialising the whole matrix (and the residual) in float64: one pass over the weight
    instead of four, each block small enough (1 MB) to stay in the core's cache while its norm,
    probe and residual are formed (3x faster on a 4096x1024 weight than 8 MB blocks). The
    residual of each element depends on its row alone, so it is the same for any block size;
    the fingerprint's sums differ only by rounding. The residual is rounded once, from float64,
    into ``out``. ``with_fingerprint=False`` forms the residual only (the fingerprint is known:
    a cache entry stores it) and returns None.
    """
    m = matrix.detach()
    if with_fingerprint:
        p, q = _probe_vectors(*m.shape)
        p, q = p.to(m.device), q.to(m.device)
    sumsq = torch.zeros((), dtype=torch.float64, device=m.device)
    probe = torch.zeros((), dtype=torch.float64, device=m.device)
    step = max(1, _BLOCK_ELEMENTS // max(1, m.shape[1]))
    for start in range(0, m.shape[0], step):
        rows = slice(start, start + step)
        block = m[rows].double()
        if with_fingerprint:
            sumsq += torch.linalg.vector_norm(block).square()
            probe += p[rows] @ (block @ q)
        if out is not None:
            out[rows] = torch.addmm(block, b[rows], a, alpha=-scaling)
    return [float(sumsq.sqrt()), float(probe)] if with_fingerprint else None


def fingerprint(matrix: torch.Tensor) -> list[float]:
    """[Frobenius norm, ``p^T M q`` with fixed unit vectors p, q] in float64: a small checksum."""
    return _rowwise_pass(matrix)


def product_fingerprint(b: torch.Tensor, a: torch.Tensor, scaling: float) -> list[float]:
    """:func:`fingerprint` of ``scaling * b @ a`` without forming the (out x in) product.

    Both entries are invariant to the sign choices of singular vectors, since ``b @ a`` is.
    """
    b, a = b.detach().double(), a.detach().double()
    gram = (b.mT @ b) * (a @ a.mT)  # ||B A||_F^2 = sum_ij (B^T B)_ij (A A^T)_ij
    p, q = _probe_vectors(b.shape[0], a.shape[1])
    probe = (p.to(b.device) @ b) @ (a @ q.to(a.device))
    return [scaling * float(gram.sum().clamp_min(0).sqrt()), scaling * float(probe)]


def _check_rank(rank: int, in_features: int, out_features: int, where: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank < min(
        in_features, out_features
    ):
        raise ValueError(
            f"{where}: rank must be an int in [1, {min(in_features, out_features) - 1}] "
            f"(below min(in, out) of the {out_features}x{in_features} weight), got {rank!r}"
        )


class SoMALinear(nn.Module):
    """``y = x W_res^T + b + s (x A^T) B^T`` with frozen ``W_res`` and trainable ``A``, ``B``.

    Build one from a pretrained layer with :meth:`from_linear`; the plain constructor only
    allocates the structure (uninitialized), e.g. to load a saved state dict into. ``scaling`` is
    ``alpha / rank``. ``merge()`` folds ``s B A`` into ``weight`` in place for inference and
    ``unmerge()`` takes it out again; while merged, ``state_dict()`` still reports the residual,
    so checkpoints never depend on the merge state.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        init: str = "minor",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_rank(rank, in_features, out_features, "SoMALinear")
        if init not in INIT_MODES:
            raise ValueError(f"SoMALinear: init must be one of {INIT_MODES}, got {init!r}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"SoMALinear: alpha must be positive, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SoMALinear: dropout must be in [0, 1), got {dropout!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self.init = init
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.A = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.B = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        # Fingerprints of the weight this layer was decomposed from and of its initial s*B0@A0;
        # adapter-only checkpoints carry them to detect a load onto a different base.
        self.base_fingerprint: list[float] | None = None
        self.init_fingerprint: list[float] | None = None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        alpha: float | None = None,
        init: str = "minor",
        dropout: float = 0.0,
        triplets: Triplets | None = None,
        method: str = "auto",
    ) -> SoMALinear:
        """Decompose a pretrained ``nn.Linear`` into residual + adapter factors.

        ``init``: ``"minor"`` (SoMA: the r smallest singular triplets), ``"principal"`` (PiSSA:
        the r largest), ``"lora"`` (Kaiming-uniform A, zero B, residual = W) or ``"released"``:
        what the official code release actually runs -- the frozen base keeps the FULL pretrained
        W (no subtraction) while A, B start from the r smallest triplets of a freshly drawn
        Kaiming-uniform matrix of the layer's shape (drawn on CPU in float32 from torch's global
        RNG, so ``torch.manual_seed`` reproduces it). That model differs slightly from the
        pretrained one at step 0; the mode exists to reproduce the released numbers.
        ``triplets`` passes a precomputed decomposition (from :func:`decompose_weights` on W, or on
        the random matrix for ``released``) so that many layers can be decomposed in one batch.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"SoMALinear.from_linear expects nn.Linear, got {type(linear).__name__}"
            )
        w = linear.weight
        if not w.is_floating_point():
            raise TypeError(f"SoMALinear.from_linear: weight dtype {w.dtype} is not floating")
        layer = cls(linear.in_features, linear.out_features, rank, alpha,
                    bias=linear.bias is not None, dropout=dropout, init=init,
                    device=w.device, dtype=w.dtype)
        layer.reset_from_weight(w, linear.bias, triplets=triplets, method=method)
        return layer

    @torch.no_grad()
    def reset_from_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          triplets: Triplets | None = None, method: str = "auto") -> None:
        """(Re)initialize residual and factors from the pretrained ``weight`` (and ``bias``)."""
        if self.merged:
            raise RuntimeError("SoMALinear.reset_from_weight: unmerge() the layer first")
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"SoMALinear.reset_from_weight: weight shape {tuple(weight.shape)} != "
                f"{(self.out_features, self.in_features)}"
            )
        dtype = self.weight.dtype
        if self.init == "lora":
            a = torch.empty_like(self.A)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A.copy_(a)
            self.B.zero_()
        else:
            if triplets is None:
                source = weight
                if self.init == "released":
                    source = torch.empty(self.out_features, self.in_features)
                    nn.init.kaiming_uniform_(source, a=math.sqrt(5))
                which = "principal" if self.init == "principal" else "minor"
                triplets = decompose_weights([source.to(weight.device)], self.rank, which,
                                             method)[0]
            if tuple(triplets.S.shape) != (self.rank,):
                raise ValueError(
                    f"SoMALinear: got {tuple(triplets.S.shape)} singular values for rank "
                    f"{self.rank}"
                )
            root = torch.sqrt(triplets.S.double().clamp_min(0) / self.scaling)
            self.B.copy_((triplets.U.double() * root).to(self.B.device, dtype))
            self.A.copy_((root[:, None] * triplets.V.double().mT).to(self.A.device, dtype))
        if self.init in ("lora", "released"):
            self.weight.copy_(weight.detach())
            self.base_fingerprint = fingerprint(weight)
        else:
            device = weight.device
            b64, a64 = self.B.double().to(device), self.A.double().to(device)
            residual = self.weight if self.weight.device == device else torch.empty_like(
                weight, dtype=dtype)
            known = triplets.base if triplets is not None else None
            computed = _rowwise_pass(weight, b64, a64, self.scaling, residual,
                                     with_fingerprint=known is None)
            self.base_fingerprint = list(known) if known is not None else computed
            if residual is not self.weight:
                self.weight.copy_(residual)
        if self.bias is not None:
            if bias is None:
                raise ValueError("SoMALinear.reset_from_weight: this layer has a bias, got None")
            self.bias.copy_(bias.detach())
        self.init_fingerprint = (None if self.init == "released"
                                 else product_fingerprint(self.B, self.A, self.scaling))

    def delta_weight(self) -> torch.Tensor:
        """``s B A`` in the weight's dtype (computed in at least float32)."""
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.scaling * (self.B.to(compute) @ self.A.to(compute))
        return delta.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        low = F.linear(F.linear(self.dropout(x), self.A), self.B)
        return out + low * self.scaling

    @torch.no_grad()
    def _fold(self, sign: float) -> None:
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.scaling * (self.B.to(compute) @ self.A.to(compute))
        self.weight.copy_((self.weight.to(compute) + sign * delta).to(self.weight.dtype))

    def merge(self) -> None:
        """Fold ``s B A`` into ``weight`` in place; forward then uses ``weight`` alone."""
        if not self.merged:
            self._fold(1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge` (to rounding), restoring the residual."""
        if self.merged:
            self._fold(-1.0)
            self.merged = False

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W_res + s B A`` as a new tensor, whatever the merge state."""
        if self.merged:
            return self.weight.detach().clone()
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        delta = self.scaling * (self.B.to(compute) @ self.A.to(compute))
        return (self.weight.to(compute) + delta).to(self.weight.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weight (and bias): zero inference overhead.

        The new weight requires grad if ``A`` did, the bias if the bias did.
        """
        w = self.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
                linear.bias.requires_grad_(self.bias.requires_grad)
        linear.weight.requires_grad_(self.A.requires_grad)
        return linear

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:
            residual = self.weight.detach() - self.delta_weight().detach()
            destination[prefix + "weight"] = residual

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,  # noqa: ANN001
                              missing_keys, unexpected_keys, error_msgs):
        has_weight = prefix + "weight" in state_dict
        has_factors = prefix + "A" in state_dict or prefix + "B" in state_dict
        if has_weight and not has_factors:
            raise RuntimeError(
                f"SoMALinear '{prefix[:-1]}': the state dict holds a plain linear weight "
                f"('{prefix}weight') without SoMA factors ('{prefix}A', '{prefix}B'). Loading it "
                "would replace the frozen residual with the full pretrained W and count the "
                "adapter twice. Load pretrained weights BEFORE inject_soma (then decompose), or "
                "load a checkpoint saved from a SoMA model."
            )
        if self.merged and (has_weight or has_factors):
            raise RuntimeError(f"SoMALinear '{prefix[:-1]}': unmerge() before loading a state")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scaling={self.scaling:g}, init={self.init}, "
                f"bias={self.bias is not None}, merged={self.merged}")
