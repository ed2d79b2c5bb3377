"""Training on the `recent` policy's contexts: a training conversation shows the LM exactly what a
streaming session under `recent` shows it at that question (same tokens, same positions, same
logits), and the stage runs end to end."""

import json

import torch

from streamformer.synthetic.streams import stream_items, write_stream
from streamformer.testing import tiny_model
from streamformer_videoqa import StreamFormerForVideoQA
from streamformer_videoqa.aligned import recent_contexts, train_aligned
from streamformer_videoqa.benchmarks import read_ovo_bench
from streamformer_videoqa.data import IGNORE, ConversationDataset, MediaOptions
from streamformer_videoqa.memory import build_policy
from streamformer_videoqa.session import StreamingSession, video_frames
from streamformer_videoqa.synthetic import initial_model, tiny_language_model, world_tokenizer


def test_a_training_context_is_what_the_session_shows_the_lm(world, tmp_path):
    tokenizer = world_tokenizer(world)
    lm = tiny_language_model(len(tokenizer), seed=0)
    lm.config.num_hidden_layers, lm.config.layer_types = 1, lm.config.layer_types[:1]
    lm = type(lm)(lm.config).eval()  # one layer: what eviction keeps is exactly a fresh forward
    model = StreamFormerForVideoQA.from_parts(tiny_model(), lm, tokenizer).eval()
    record = write_stream(world, tmp_path, "s", 0.25, 0, split="train")
    vocabulary = json.loads((world / "world.json").read_text())["vocabulary"]["words"]
    items = [{"id": k, **item} for k, item in enumerate(stream_items(record, vocabulary, 6, 0))]
    (tmp_path / "items.json").write_text(json.dumps(items))
    questions = read_ovo_bench(tmp_path / "items.json")
    conversations, features = recent_contexts(model, tmp_path / record["video"], questions, 3, 2.0, 8)
    assert conversations and all(f.shape == (3, 16, 32) for f in features.values())
    (tmp_path / "conversations.json").write_text(json.dumps(conversations))
    options = MediaOptions(3, 32, model.config.tokens_per_frame)
    data = ConversationDataset(tmp_path / "conversations.json", tmp_path, tokenizer, options=options, features=features)
    example = data[len(data) // 2]
    prompt = example["input_ids"][: next(i for i, label in enumerate(example["labels"]) if label != IGNORE)]
    with torch.no_grad():
        trained = model(torch.tensor([prompt]), vision_features=example["vision_features"][None]).logits[0, -1]
    # The session under `recent` at that question's time, fed the same stream.
    ask = next(c for c in conversations if c["id"] == example["id"])
    time_s = next(a["time_s"] for q in questions for a in _asks(q) if f"s/{a['id']}" == ask["id"])
    session = StreamingSession(model, tokenizer, build_policy("recent", frames=3), 8, 4)
    for t, frame in video_frames(tmp_path / record["video"], 2.0, 32):
        if t > time_s:
            break
        session.add_frame(frame, t)
    question = ask["conversations"][0]["value"].removeprefix("<video>")
    ids = session._ids(f"{question}{session._close}")
    assert session._ids("") == [] and session.lm.length + len(ids) == len(prompt)
    streamed = session.lm.append(session._embed(ids))
    torch.testing.assert_close(streamed, trained.float(), atol=1e-4, rtol=0)


def _asks(question):
    from streamformer_videoqa.bench import questions_to_ask

    return questions_to_ask(question)


def test_train_aligned_writes_a_model_that_loads(world, tmp_path):
    tiny_model().save_pretrained(tmp_path / "backbone")
    model, tokenizer = initial_model(world, tmp_path / "backbone")
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    out = train_aligned(str(tmp_path / "start"), str(world), str(tmp_path / "aligned"), frames=3, fps=2.0,
                        vision_window=8, minutes=[0.25], items_per_category=6, epochs=1, batch_size=4)  # fmt: skip
    trained = StreamFormerForVideoQA.from_pretrained(out)
    start = StreamFormerForVideoQA.from_pretrained(tmp_path / "start")
    assert not torch.equal(trained.projector.linear_1.weight, start.projector.linear_1.weight)
    assert (out / "tokenizer.json").exists()
