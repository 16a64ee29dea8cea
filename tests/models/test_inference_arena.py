"""The CPU arena of optimize_for_inference's models: large blocks reused from call to call, never while
in use, kept only while a model needs them."""
import gc

import torch

from fastladder import _C
from fastladder.models import create_model, optimize_for_inference
from fastladder.testing import randomize_batch_norm

TINY = dict(growth_rate=4, num_init_features=8, bn_size=2, block_config=(2, 2, 4, 2), context_channels=16,
            upsample_channels=8)


def _model_and_image(generator):
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=3, **TINY), generator).eval()
    # large enough for blocks of at least 1 MiB (the logits: 3 × 384 × 416 floats)
    return model, torch.randn(1, 3, 384, 416, generator=generator)


def test_the_second_call_reuses_every_large_block(generator):
    model, x = _model_and_image(generator)
    fast = optimize_for_inference(model, x)  # the first call (warm-up) fills the arena
    before = _C.arena_stats()
    first = fast(x)
    after = _C.arena_stats()
    assert after["reused"] > before["reused"]
    assert after["fresh"] == before["fresh"], "a call at the same size allocated a fresh large block"
    torch.testing.assert_close(fast(x), first, rtol=0, atol=0)  # the same bits from reused memory


def test_a_returned_result_is_never_handed_out_again(generator):
    model, x = _model_and_image(generator)
    fast = optimize_for_inference(model, x)
    kept = fast(x)
    copy = kept.clone()
    for _ in range(2):
        fast(torch.randn(x.shape, generator=generator))
    torch.testing.assert_close(kept, copy, rtol=0, atol=0)


def test_allocations_outside_a_call_bypass_the_arena(generator):
    model, x = _model_and_image(generator)
    fast = optimize_for_inference(model, x)
    before = _C.arena_stats()
    big = torch.empty(4 << 20, dtype=torch.uint8)
    big.fill_(1)
    del big
    after = _C.arena_stats()
    assert (after["fresh"], after["reused"], after["idle_bytes"]) == (
        before["fresh"], before["reused"], before["idle_bytes"])
    del fast


def test_the_idle_blocks_go_when_the_last_model_goes(generator):
    gc.collect()  # models of earlier tests
    model, x = _model_and_image(generator)
    users = _C.arena_stats()["users"]
    fast = optimize_for_inference(model, x)
    stats = _C.arena_stats()
    assert stats["users"] == users + 1 and stats["idle_bytes"] > 0
    assert stats["idle_bytes"] <= 2 * stats["peak_bytes"]
    del fast
    gc.collect()
    stats = _C.arena_stats()
    assert stats["users"] == users
    if users == 0:
        assert stats["idle_bytes"] == 0 and stats["idle_blocks"] == 0


def test_reuse_memory_false_keeps_nothing(generator):
    model, x = _model_and_image(generator)
    users = _C.arena_stats()["users"]
    fast = optimize_for_inference(model, x, reuse_memory=False)
    before = _C.arena_stats()
    expected = fast(x)
    after = _C.arena_stats()
    assert after["users"] == users
    assert (after["fresh"], after["reused"]) == (before["fresh"], before["reused"])
    torch.testing.assert_close(optimize_for_inference(model, x)(x), expected, rtol=0, atol=0)
