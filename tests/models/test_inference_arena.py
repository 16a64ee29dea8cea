"""The CPU arena of optimize_for_inference's models: large blocks reused from call to call, never while
in use, per model, and given back when the model goes."""
import torch

from fastladder.models import create_model, optimize_for_inference
from fastladder.testing import randomize_batch_norm

TINY = dict(growth_rate=4, num_init_features=8, bn_size=2, block_config=(2, 2, 4, 2), context_channels=16,
            upsample_channels=8)


def _model_and_image(generator, height=384, width=416):
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=3, **TINY), generator).eval()
    # large enough for blocks of at least 1 MiB (the logits: 3 × 384 × 416 floats)
    return model, torch.randn(1, 3, height, width, generator=generator)


def test_the_second_call_reuses_every_large_block(generator):
    model, x = _model_and_image(generator)
    fast = optimize_for_inference(model, x)  # the first call (warm-up) fills the arena
    before = fast._arena.stats()
    first = fast(x)
    after = fast._arena.stats()
    assert after["reused"] > before["reused"]
    assert after["fresh"] == before["fresh"], "a call at the same size allocated a fresh large block"
    assert 0 < after["idle_bytes"] <= 2 * after["peak_bytes"]
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
    before = fast._arena.stats()
    big = torch.empty(4 << 20, dtype=torch.uint8)
    big.fill_(1)
    del big
    assert fast._arena.stats() == before


def test_each_model_has_its_own_arena(generator):
    """A second model (another size) neither takes the first one's blocks nor pushes them out."""
    model, x = _model_and_image(generator)
    small = optimize_for_inference(model, x)
    large = optimize_for_inference(model, torch.randn(1, 3, 512, 640, generator=generator))
    kept = small._arena.stats()
    large(torch.randn(1, 3, 512, 640, generator=generator))
    assert small._arena.stats() == kept
    small(x)
    assert small._arena.stats()["fresh"] == kept["fresh"]


def test_a_deleted_model_gives_its_blocks_back(generator):
    model, x = _model_and_image(generator)
    fast = optimize_for_inference(model, x)
    arena = fast._arena.arena
    assert arena.stats()["idle_bytes"] > 0
    result = fast(x)  # outlives the model: freed normally later
    del fast
    stats = arena.stats()
    assert stats["idle_bytes"] == 0 and stats["idle_blocks"] == 0
    del result
    assert arena.stats()["idle_bytes"] == 0 and arena.stats()["live_bytes"] == 0


def test_reuse_memory_false_keeps_nothing(generator):
    model, x = _model_and_image(generator)
    fast = optimize_for_inference(model, x, reuse_memory=False)
    assert fast._arena is None
    torch.testing.assert_close(optimize_for_inference(model, x)(x), fast(x), rtol=0, atol=0)
