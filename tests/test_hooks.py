import pytest

from jaxinterp.models import HookError, parse_hooks, valid_hook_names


def test_parse_hooks_orders_and_layers():
    hooks = parse_hooks("hook_embed,blocks.2.hook_resid_pre,blocks.1.hook_mlp_out", 3)
    assert [(h.layer, h.kind) for h in hooks] == [(-1, "hook_embed"), (2, "hook_resid_pre"), (1, "hook_mlp_out")]
    assert max(hooks, key=lambda h: h.order).name == "blocks.2.hook_resid_pre"
    assert len(valid_hook_names(30)) == 1 + 30 * 9


@pytest.mark.parametrize("name", ["blocks.3.hook_resid_post", "blocks.1.hook_resid_middle", "blocks.1.attn.hook_mlp_out", "resid_post", "blocks.x.hook_mlp_out"])
def test_unknown_hook_lists_valid_ones(name):
    with pytest.raises(HookError, match=r"unknown hook .*valid hooks: hook_embed, blocks\.\{0\.\.2\}\.hook_resid_pre"):
        parse_hooks(name, 3)


def test_close_match_is_suggested():
    with pytest.raises(HookError, match="did you mean blocks.1.hook_resid_post"):
        parse_hooks("blocks.1.hook_resid_pst", 3)
