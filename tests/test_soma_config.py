"""SoMAConfig: validation of every field, name matching rules and plain-dict round trip."""
import io

import pytest
import torch

from soma_d2.soma import SoMAConfig


def test_defaults_follow_the_recipe():
    cfg = SoMAConfig(rank=16)
    assert cfg.alpha is None and cfg.alpha_for_rank(16) == 16.0 and cfg.alpha_for_rank(8) == 8.0
    assert cfg.target_modules == ["q", "k", "v", "proj", "fc1", "fc2"]
    assert (cfg.init, cfg.bias, cfg.start_block, cfg.dropout) == ("minor", "adapted", 0, 0.0)
    assert SoMAConfig(rank=4, alpha=8).alpha_for_rank(4) == 8.0


@pytest.mark.parametrize(
    ("kwargs", "field", "exc"),
    [
        ({"rank": 0}, "rank", ValueError),
        ({"rank": -3}, "rank", ValueError),
        ({"rank": 2.0}, "rank", ValueError),
        ({"rank": True}, "rank", ValueError),
        ({"rank": 4, "alpha": 0}, "alpha", ValueError),
        ({"rank": 4, "alpha": "16"}, "alpha", ValueError),
        ({"rank": 4, "target_modules": []}, "target_modules", TypeError),
        ({"rank": 4, "target_modules": ["q", ""]}, "target_modules", ValueError),
        ({"rank": 4, "target_modules": "blocks.(("}, "target_modules", ValueError),
        ({"rank": 4, "init": "pissa"}, "init", ValueError),
        ({"rank": 4, "start_block": -1}, "start_block", ValueError),
        ({"rank": 4, "block_pattern": r"blocks\.\d+"}, "block_pattern", ValueError),
        ({"rank": 4, "block_pattern": r"(a)(b)"}, "block_pattern", ValueError),
        ({"rank": 4, "rank_per_block": {1: -1}}, "rank_per_block", ValueError),
        ({"rank": 4, "rank_per_block": {-1: 2}}, "rank_per_block", ValueError),
        ({"rank": 4, "rank_per_block": [4, 4]}, "rank_per_block", TypeError),
        ({"rank": 4, "bias": "lora_only"}, "bias", ValueError),
        ({"rank": 4, "extra_trainable": "mask_token"}, "extra_trainable", TypeError),
        ({"rank": 4, "dropout": 1.0}, "dropout", ValueError),
        ({"rank": 4, "dropout": -0.1}, "dropout", ValueError),
    ],
)
def test_bad_values_name_the_field(kwargs, field, exc):
    with pytest.raises(exc, match=field):
        SoMAConfig(**kwargs)


def test_bad_init_lists_accepted_values():
    with pytest.raises(ValueError, match="minor.*principal.*lora.*released.*'pissa'"):
        SoMAConfig(rank=4, init="pissa")


def test_suffix_matching_respects_dot_boundaries():
    cfg = SoMAConfig(rank=4, target_modules=["q", "attn.proj"])
    assert cfg.matches_target("blocks.3.attn.q")
    assert not cfg.matches_target("blocks.3.attn.qkv")
    assert cfg.matches_target("blocks.3.attn.proj")
    assert not cfg.matches_target("blocks.3.mlp.proj")
    assert not cfg.matches_target("blocks.3.attn.out_proj")


def test_regex_targets_use_fullmatch():
    cfg = SoMAConfig(rank=4, target_modules=r"blocks\.\d+\.mlp\.fc\d")
    assert cfg.matches_target("blocks.11.mlp.fc2")
    assert not cfg.matches_target("backbone.blocks.11.mlp.fc2")
    assert not cfg.matches_target("blocks.11.mlp.fc2.x")


def test_block_index_and_rank_per_block():
    cfg = SoMAConfig(rank=4, rank_per_block={"2": 8, 3: 0})
    assert cfg.rank_per_block == {2: 8, 3: 0}
    assert cfg.block_index("backbone.net.blocks.12.attn.q") == 12
    assert cfg.block_index("patch_embed.proj") is None
    assert [cfg.rank_for_block(b) for b in range(4)] == [4, 4, 8, 0]
    fn = SoMAConfig(rank=4, rank_per_block=lambda b: 2 * b)
    assert fn.rank_for_block(3) == 6
    with pytest.raises(ValueError, match=r"rank_per_block\(1\)"):
        SoMAConfig(rank=4, rank_per_block=lambda b: -1).rank_for_block(1)


def test_dict_round_trip_through_weights_only_load():
    cfg = SoMAConfig(rank=8, alpha=16, target_modules=["q", "v"], init="principal",
                     start_block=2, rank_per_block={3: 4}, bias="none",
                     extra_trainable=["mask_token"], dropout=0.1)
    buf = io.BytesIO()
    torch.save(cfg.to_dict(), buf)
    buf.seek(0)
    back = SoMAConfig.from_dict(torch.load(buf, weights_only=True))
    assert back == cfg


def test_callable_rank_per_block_does_not_serialize():
    with pytest.raises(TypeError, match="callable.*cannot be serialized"):
        SoMAConfig(rank=4, rank_per_block=lambda b: 4).to_dict()


def test_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="unknown keys.*'ranks'"):
        SoMAConfig.from_dict({"rank": 4, "ranks": 3})
    with pytest.raises(ValueError, match="missing required key 'rank'"):
        SoMAConfig.from_dict({"alpha": 4})
