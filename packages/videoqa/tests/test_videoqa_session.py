"""Streaming sessions under every memory policy: memory within budget over a 10,000-frame stream,
the cached path equal to one fresh forward over what is kept, answers blind to later frames, the
awkward inputs of a live stream, and the `stream` command."""

import json

import numpy as np
import pytest
import torch
from videoqa_helpers import tiny_lm

from streamformer.cache import cache_bytes_per_frame
from streamformer.testing import tiny_model
from streamformer.video import write_video
from streamformer_videoqa import StreamFormerForVideoQA
from streamformer_videoqa.cli import main
from streamformer_videoqa.lm_cache import LMCache
from streamformer_videoqa.memory import StreamForestMemory, build_policy, merge_tokens
from streamformer_videoqa.session import StreamingSession, chat_pieces, run_stream

# Budgets small enough that a short stream evicts, merges and consolidates many times over.
BUDGETS = {
    "recent": {"frames": 3},
    "streamingvlm": {"vision_frames": 6, "text_rounds": 2, "text_window": 40},
    "streamforest": {"short_frames": 4, "short_tokens": 2, "event_window": 3, "long_tokens_per_frame": 1, "long_quota": 8},
}
VISION_WINDOW = 8


def build(tokenizer, layers: int = 2, context: int = 256) -> StreamFormerForVideoQA:
    lm = tiny_lm(len(tokenizer))
    if layers != 2 or context != 256:
        config = lm.config
        config.num_hidden_layers, config.max_position_embeddings = layers, context
        config.layer_types = config.layer_types[:layers]
        lm = type(lm)(config)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in lm.parameters():
                if p.ndim == 2:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return StreamFormerForVideoQA.from_parts(tiny_model(), lm.eval(), tokenizer).eval()


def frames(count: int, seed: int = 0, fps: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    for t in range(count):
        yield t / fps, torch.rand(3, 32, 32, generator=g) * 2 - 1


def session(model, tokenizer, policy: str, **kwargs) -> StreamingSession:
    return StreamingSession(model, tokenizer, build_policy(policy, **BUDGETS.get(policy, {})), VISION_WINDOW, 4, **kwargs)


@pytest.mark.parametrize("policy", ["recent", "streamingvlm", "streamforest"])
def test_memory_stays_within_budget_over_10000_frames(tokenizer, policy):
    model = build(tokenizer)
    stream = session(model, tokenizer, policy)
    prompt = stream.lm.length
    budget = stream.policy.token_budget(model.config.tokens_per_frame)
    per_token = stream.lm.nbytes() // prompt
    vision_bytes = VISION_WINDOW * cache_bytes_per_frame(model.config.vision_config)
    most = {"lm": 0, "memory": 0}
    for i, (time_s, frame) in enumerate(frames(10_000)):
        stream.add_frame(frame, time_s)
        if i % 250 == 249:  # a question now and then: rounds come and go too
            assert stream.ask("what is the ball", time_s).error is None
        stats = stream.stats()
        most["lm"] = max(most["lm"], stats["lm_tokens"] - prompt)
        most["memory"] = max(most["memory"], stats["memory_tokens"])
        assert stats["lm_tokens"] - prompt + stats["memory_tokens"] <= budget
        assert stats["lm_bytes"] == stats["lm_tokens"] * per_token and stats["vision_bytes"] <= vision_bytes
    assert stream.frames_seen == 10_000
    # The budget is reached (the test sees the policy at work), never passed.
    assert max(most.values()) >= min(budget, 3 * model.config.tokens_per_frame)


def test_full_refuses_at_the_context_and_says_why(tokenizer):
    model = build(tokenizer, context=64)
    stream = session(model, tokenizer, "full")
    answers, latencies = run_stream(stream, frames(100), [{"id": "late", "time_s": 40.0, "question": "what is the ball"}])
    assert stream.lm.length <= 64 and len(latencies) == stream.frames_seen < 100
    assert answers[0].reply is None and "choose a bounded policy" in answers[0].error


def shadow(lm: LMCache) -> list[torch.Tensor]:
    """Mirror every token the cache takes (its input embedding) and every eviction, so a test can
    rebuild the kept sequence and run it fresh."""
    kept: list[torch.Tensor] = []
    append, keep = lm.append, lm.keep

    def appending(embeds):
        kept.append(embeds[0].detach().clone())
        return append(embeds)

    def keeping(indices):
        rows = torch.cat(kept)[torch.as_tensor(list(indices), dtype=torch.long)]
        kept[:] = [rows]
        keep(indices)

    lm.append, lm.keep = appending, keeping
    return kept


@pytest.mark.parametrize("policy", ["full", "recent", "streamingvlm", "streamforest"])
def test_cached_path_equals_one_fresh_forward_over_the_kept_tokens(tokenizer, policy):
    """With one layer, what a cache holds after evictions (keys re-rotated to contiguous
    positions) is exactly what one forward over the kept tokens at positions 0..n-1 computes."""
    model = build(tokenizer, layers=1, context=1024)
    stream = session(model, tokenizer, policy)
    kept = shadow(stream.lm)
    stream.reset()  # the prompt again, now mirrored too
    for i, (time_s, frame) in enumerate(frames(30)):
        stream.add_frame(frame, time_s)
        if i in (9, 20):
            stream.ask("what is the ball", time_s)
    memory = stream.policy.memory()
    if memory is not None:
        stream.lm.append(memory[None])
    question = stream._embed(stream._ids(f"\nwhat is the person doing{stream._close}"))
    cached = stream.lm.append(question)
    tokens = torch.cat(kept)
    assert len(tokens) == stream.lm.length
    with torch.no_grad():
        fresh = model.language_model(inputs_embeds=tokens[None], position_ids=torch.arange(len(tokens))[None]).logits[0, -1]
    torch.testing.assert_close(cached, fresh.float(), atol=1e-4, rtol=0)
    if policy != "full":  # something was evicted or merged on the way
        assert len(tokens) < 1 + 30 * model.config.tokens_per_frame


@pytest.mark.parametrize("policy", ["full", "recent", "streamingvlm", "streamforest"])
def test_an_answer_never_depends_on_frames_after_its_time(tokenizer, policy):
    model = build(tokenizer, context=1024)
    questions = [{"id": f"q{t}", "time_s": t, "question": "what is the ball"} for t in (2.2, 6.2, 11.7)]

    def answers(later_seed: int):
        shared, later = list(frames(13)), list(frames(27, seed=later_seed))[13:]  # frames up to 6.0 s are shared
        return run_stream(session(model, tokenizer, policy), shared + later, questions)[0]

    a, b = answers(1), answers(2)
    assert [x.reply for x in a[:2]] == [y.reply for y in b[:2]] and [x.frames_seen for x in a] == [5, 13, 24]
    # The frames do reach the answers: the different later frames change what the LM computes.
    stream_a, stream_b = session(model, tokenizer, policy), session(model, tokenizer, policy)
    for (t, fa), (_, fb) in zip(frames(20, seed=1), frames(20, seed=2), strict=True):
        stream_a.add_frame(fa, t), stream_b.add_frame(fb, t)
    memory_a, memory_b = stream_a.policy.memory(), stream_b.policy.memory()
    for s, m in ((stream_a, memory_a), (stream_b, memory_b)):
        if m is not None:
            s.lm.append(m[None])
    ids = stream_a._embed(stream_a._ids(f"\nwhat is the ball{stream_a._close}"))
    assert not torch.allclose(stream_a.lm.append(ids), stream_b.lm.append(ids))


def test_awkward_inputs_give_clear_results_or_errors(tokenizer):
    model = build(tokenizer, context=128)
    stream = session(model, tokenizer, "recent")
    first = stream.ask("what is the ball", 0.0, "before any frame")
    assert first.error is None and first.frames_seen == 0
    questions = [
        {"id": "a", "time_s": 1.0, "question": "what is the ball"},
        {"id": "b", "time_s": 1.0, "question": "what is the person doing"},
        {"id": "long", "time_s": 1.5, "question": "what " * 200},
        {"id": "end", "time_s": 99.0, "question": "what is the ball"},
    ]
    stream.reset()
    answers, _ = run_stream(stream, frames(6), questions)
    assert [a.id for a in answers] == ["a", "b", "long", "end"]
    assert answers[0].error is None and answers[1].error is None and answers[0].frames_seen == answers[1].frames_seen == 3
    assert answers[2].reply is None and "context of 128" in answers[2].error  # refused, never cut
    assert answers[3].error is None and answers[3].after_end and answers[3].frames_seen == 6
    with pytest.raises(ValueError, match=r"float frame must be \[3, 32, 32\]"):
        stream.add_frame(torch.zeros(3, 16, 16), 10.0)
    with pytest.raises(ValueError, match="time order"):
        stream.add_frame(torch.zeros(3, 32, 32), 0.5)
    stream.add_frame(np.zeros((48, 64, 3), np.uint8), 10.0)  # any size of uint8 frame is resized, as files are
    assert stream.frames_seen == 7


def test_chat_pieces_cut_the_template_where_the_contents_go(tokenizer):
    assert chat_pieces(tokenizer) == (
        "<|im_start|> user ",
        " <|im_end|> <|im_start|> assistant ",
        " <|im_end|> <|im_start|> user ",
    )


def test_tome_merges_the_most_similar_tokens_by_size_weighted_average():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0], [-1.0, -0.1]])
    merged, sizes, scores = merge_tokens(x, 3)
    torch.testing.assert_close(merged, torch.tensor([[1.0, 0.05], [0.05, 1.0], [-1.0, -0.05]]))
    assert sizes.tolist() == [2, 2, 2] and len(scores) == 3 and bool((scores > 0.99).all())
    merged, sizes, _ = merge_tokens(x, 1)
    assert sizes.tolist() == [6] and torch.allclose(merged, x.mean(0, keepdim=True))


def test_streamforest_cuts_events_at_the_least_similar_frames_and_merges_within_its_quota():
    memory = StreamForestMemory(short_frames=2, short_tokens=2, event_window=3, long_tokens_per_frame=1, long_quota=3)
    scenes = [torch.tensor([1.0, 0.0])] * 2 + [torch.tensor([0.0, 1.0])] * 6  # a scene change after frame 1
    for t, summary in enumerate(scenes):
        memory.observe(torch.randn(4, 8), summary, float(t))
    # Frames 0-6 left "now"; at 5 short frames the first event is cut at the scene change (2 frames).
    assert memory.events[0].frames == 2 and memory.events[0].centre == 0.5
    assert sum(e.frames for e in memory.events) + len(memory.short) + 1 == len(scenes)
    assert sum(len(e.tokens) for e in memory.events) <= 3 or len(memory.events) == 1
    assert len(memory.memory()) == sum(len(e.tokens) for e in memory.events) + 2 * len(memory.short) + 4


def test_stream_command_prints_and_writes_each_answer(tokenizer, tmp_path, capsys):
    model = build(tokenizer)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    write_video(tmp_path / "v.mp4", np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8), fps=8)
    items = [{"id": "q1", "realtime": 1.0, "question": "what is the ball", "options": ["A. red", "B. blue"]},
             {"id": "q2", "time_s": 6.0, "question": "what is the person doing"}]  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(items))
    main(["stream", str(tmp_path / "v.mp4"), "--model", str(tmp_path / "m"), "--questions", str(tmp_path / "q.json"),
          "--policy", "recent", "--budgets", '{"frames": 2}', "--fps", "4", "--output", str(tmp_path / "out.json"),
          "--device", "cpu"])  # fmt: skip
    out = json.loads((tmp_path / "out.json").read_text())
    assert [a["id"] for a in out["answers"]] == ["q1", "q2"] and [a["frames_seen"] for a in out["answers"]] == [5, 20]
    assert out["answers"][1]["after_end"] and all(isinstance(a["reply"], str) for a in out["answers"])
    assert len(out["frame_latencies_s"]) == 20 and out["stats"]["lm_tokens"] > 0
    printed = capsys.readouterr().out
    assert "q1:" in printed and "ms per frame" in printed
