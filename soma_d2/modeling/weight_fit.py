"""The check that a converted ViT state dict fits the configured ViT, shared by both families.

``load_state_dict(strict=False)`` reports missing and unexpected keys; apart from the mask token,
which some released files lack, either means the file and ``MODEL.VIT`` disagree, and the error
names both so that the config can be fixed.
"""
from __future__ import annotations

from torch.nn.modules.module import _IncompatibleKeys


def check_state_fit(incompatible: _IncompatibleKeys, path: str, arch: str,
                    family: str = "") -> None:
    """Raise ValueError naming ``path`` and ``arch`` if keys other than ``mask_token`` are
    missing, or any are unexpected; ``family`` (e.g. ``"DINOv3"``) is named in the message."""
    missing = [k for k in incompatible.missing_keys if k != "mask_token"]
    if missing or incompatible.unexpected_keys:
        where = f"{family}; " if family else ""
        raise ValueError(
            f"MODEL.SOMA.PRETRAINED={path!r} does not fit MODEL.VIT.ARCH={arch!r}"
            f" ({where}EMBED_DIM/DEPTH overrides included): missing {missing[:8]}, unexpected "
            f"{incompatible.unexpected_keys[:8]}"
        )
